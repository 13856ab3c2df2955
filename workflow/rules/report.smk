# Tables and figures: small, run on the submitting machine (LOCAL_RULES, common.smk).


rule claims:
    """The paper's direction (w/ vs w/o Deferred) beside the run's, per image table, metric
    and row pair, with a verdict that respects seed noise; the report opens with it."""
    input:
        tables=[f"results/tables/{t}.csv" for t in [*TOK["tables"], *GEN["tables"]]],
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
        **stage_params("claims_report.claims"),
        settings={},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule synthetic_table:
    input:
        metrics=[f"{run}/eval/metrics.json" for run in main_runs()],
    output:
        table=report(
            "results/tables/synthetic.csv",
            caption="../report/synthetic_table.rst",
            category="Synthetic",
        ),
        claims=report(
            "results/tables/synthetic_claims.csv",
            caption="../report/synthetic_table.rst",
            category="Synthetic",
        ),
    log:
        log_path("synthetic_table", "synthetic"),
    benchmark:
        bench_path("synthetic_table", "synthetic")
    conda:
        ENV
    params:
        **stage_params("synthetic_report.tables"),
        settings={},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule embeddings_collapse:
    input:
        metrics=[f"{run}/eval/metrics.json" for run in collapse_runs()],
        samples=[f"{run}/eval/samples.npz" for run in collapse_runs()],
    output:
        table=report(
            "results/tables/embeddings_collapse.csv",
            caption="../report/embeddings_collapse.rst",
            category="Synthetic",
        ),
        figure=report(
            "results/figures/embeddings_collapse.png",
            caption="../report/embeddings_collapse.rst",
            category="Synthetic",
        ),
    log:
        log_path("embeddings_collapse", "embeddings_collapse"),
    benchmark:
        bench_path("embeddings_collapse", "embeddings_collapse")
    conda:
        ENV
    params:
        **stage_params("synthetic_report.embeddings_collapse"),
        settings={"figure_seed": SYN["figure_seed"]},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fig2:
    input:
        projections=expand(
            "results/synthetic/dim{dim}/h{hidden}/seed{seed}/projection.npz",
            dim=SYN["input_dims"],
            hidden=SYN["hidden"],
            seed=SYN["figure_seed"],
        ),
    output:
        figure=report(
            "results/figures/fig2.png",
            caption="../report/fig2.rst",
            category="Synthetic",
        ),
    log:
        log_path("fig2", "fig2"),
    benchmark:
        bench_path("fig2", "fig2")
    conda:
        ENV
    params:
        **stage_params("synthetic_report.fig2"),
        settings={"input_dims": SYN["input_dims"], "token_dims": SYN["token_dims"]},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fig3_fig6:
    input:
        baseline_init=expand(
            "results/synthetic/dim{dim}/h{hidden}/seed{seed}/baseline/init/embeddings.npz",
            dim=SYN["figure_input_dim"],
            hidden=SYN["hidden"],
            seed=SYN["figure_seed"],
        ),
        deferred_init=expand(
            "results/synthetic/dim{dim}/h{hidden}/seed{seed}/deferred/init/embeddings.npz",
            dim=SYN["figure_input_dim"],
            hidden=SYN["hidden"],
            seed=SYN["figure_seed"],
        ),
        baseline_eval=expand(
            "results/synthetic/dim{dim}/h{hidden}/seed{seed}/baseline/eval/samples.npz",
            dim=SYN["figure_input_dim"],
            hidden=SYN["hidden"],
            seed=SYN["figure_seed"],
        ),
        deferred_eval=expand(
            "results/synthetic/dim{dim}/h{hidden}/seed{seed}/deferred/eval/samples.npz",
            dim=SYN["figure_input_dim"],
            hidden=SYN["hidden"],
            seed=SYN["figure_seed"],
        ),
    output:
        fig3=report(
            "results/figures/fig3.png",
            caption="../report/fig3.rst",
            category="Synthetic",
        ),
        fig6=report(
            "results/figures/fig6.png",
            caption="../report/fig6.rst",
            category="Synthetic",
        ),
    log:
        log_path("fig3_fig6", "fig3_fig6"),
    benchmark:
        bench_path("fig3_fig6", "fig3_fig6")
    conda:
        ENV
    params:
        **stage_params("synthetic_report.fig3_fig6"),
        settings={},
        preset=PRESET,
    script:
        STAGE_SCRIPT
