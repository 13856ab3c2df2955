# The plan of the targets, from config alone: no dataset path, no data, no GPU needed
# (runs on the submitting machine: LOCAL_RULES, common.smk).


rule budget:
    """Steps per epoch, maximum steps, warm-up, GAN start, k-means sample, resources and (with
    measured step times) GPU-hours of every training run of the targets (README: Budget).
    """
    input:
        unpack(plan.get_step_times),
    output:
        table="results/plan/budget.csv",
        summary="results/plan/budget_summary.csv",
    log:
        log_path("budget", "budget"),
    benchmark:
        bench_path("budget", "budget")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.plan.budget"),
        settings=lambda w: plan.budget_settings(),
        preset=PRESET,
    script:
        STAGE_SCRIPT
