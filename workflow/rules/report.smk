# Reports across families: the claims table (the paper's direction beside the run's) and
# the training curves of every group. Tables and figures run on the submitting machine
# (vqshrink.launch.LOCAL_RULES).


wildcard_constraints:
    group="|".join(CURVE_METRICS),


rule claims:
    """The paper's direction (w/ vs w/o Deferred) beside the run's, per image table, metric
    and row pair, with a verdict that respects seed noise; the report opens with it."""
    input:
        tables=plan.image_tables(),
    output:
        claims=report(
            "results/tables/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
        ),
    log:
        log_path("claims", "claims"),
    benchmark:
        bench_path("claims", "claims")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.claims_report.claims"),
        settings={},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule training_curves:
    """Training and validation loss per epoch of every trained model of a group."""
    input:
        curves=plan.get_curves,
    output:
        figure=report(
            "results/figures/curves/{group}-{dataset}.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"group": "{group}", "dataset": "{dataset}"},
        ),
    log:
        log_path("training_curves", "{group}-{dataset}"),
    benchmark:
        bench_path("training_curves", "{group}-{dataset}")
    wildcard_constraints:
        dataset="|".join([*IMAGE_DATASETS, "gaussians"]),
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.curves.curves"),
        settings=plan.curves_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT
