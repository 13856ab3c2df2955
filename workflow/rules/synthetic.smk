# Synthetic Gaussian experiments (paper Sec. 4, App. A.1-A.2; older version Sec. 3, 5):
# data -> [autoencoder] -> k-means codebook -> VQ training -> evaluation.


rule synthetic_data:
    output:
        data="results/synthetic/data/dim{dim}.npz",
        record="results/synthetic/data/dim{dim}.json",
    log:
        log_path("synthetic_data", "dim{dim}"),
    benchmark:
        bench_path("synthetic_data", "dim{dim}")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.synthetic.make_data"),
        settings=plan.syn_data_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule synthetic_pretrain_ae:
    input:
        data=rules.synthetic_data.output.data,
    output:
        model="results/synthetic/dim{dim}/h{hidden}/seed{seed}/ae/model.pt",
        curve="results/synthetic/dim{dim}/h{hidden}/seed{seed}/ae/curve.csv",
        record="results/synthetic/dim{dim}/h{hidden}/seed{seed}/ae/run.json",
    log:
        log_path("synthetic_pretrain_ae", "dim{dim}_h{hidden}_seed{seed}"),
    benchmark:
        bench_path("synthetic_pretrain_ae", "dim{dim}_h{hidden}_seed{seed}")
    conda:
        ENV
    threads: 1
    resources:
        **plan.stage_resources("synthetic"),
    params:
        **stage_params("vqshrink.stages.synthetic.pretrain_ae"),
        settings=plan.syn_ae_settings,
        preset=PRESET,
        state_dir=lambda w: plan.syn_state(w, "ae"),
    script:
        STAGE_SCRIPT


rule synthetic_init_codebook:
    input:
        unpack(plan.get_syn_ae),
        data=rules.synthetic_data.output.data,
    output:
        init="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/init/model.pt",
        embeddings="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/init/embeddings.npz",
        record="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/init/run.json",
    log:
        log_path("synthetic_init_codebook", "dim{dim}_h{hidden}_seed{seed}_{schedule}"),
    benchmark:
        bench_path(
            "synthetic_init_codebook", "dim{dim}_h{hidden}_seed{seed}_{schedule}"
        )
    conda:
        ENV
    threads: 1
    resources:
        **plan.stage_resources("synthetic"),
    params:
        **stage_params("vqshrink.stages.synthetic.init_codebook"),
        settings=plan.syn_init_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule synthetic_train_vq:
    input:
        data=rules.synthetic_data.output.data,
        init=rules.synthetic_init_codebook.output.init,
    output:
        model="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/vq/model.pt",
        curve="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/vq/curve.csv",
        record="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/vq/run.json",
    log:
        log_path("synthetic_train_vq", "dim{dim}_h{hidden}_seed{seed}_{schedule}"),
    benchmark:
        bench_path("synthetic_train_vq", "dim{dim}_h{hidden}_seed{seed}_{schedule}")
    conda:
        ENV
    threads: 1
    resources:
        **plan.stage_resources("synthetic"),
    params:
        **stage_params("vqshrink.stages.synthetic.train_vq"),
        settings=plan.syn_vq_settings,
        preset=PRESET,
        state_dir=lambda w: plan.syn_state(w, "vq"),
    script:
        STAGE_SCRIPT


rule synthetic_eval:
    input:
        data=rules.synthetic_data.output.data,
        model=rules.synthetic_train_vq.output.model,
    output:
        metrics="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/eval/metrics.json",
        samples="results/synthetic/dim{dim}/h{hidden}/seed{seed}/{schedule}/eval/samples.npz",
    log:
        log_path("synthetic_eval", "dim{dim}_h{hidden}_seed{seed}_{schedule}"),
    benchmark:
        bench_path("synthetic_eval", "dim{dim}_h{hidden}_seed{seed}_{schedule}")
    conda:
        ENV
    threads: 1
    resources:
        **plan.stage_resources("synthetic"),
    params:
        **stage_params("vqshrink.stages.synthetic.evaluate"),
        settings=plan.syn_eval_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule synthetic_projection:
    """2-D views for Fig. 2: the data itself in 2-D, t-SNE above (paper Sec. 6.1)."""
    input:
        baseline="results/synthetic/dim{dim}/h{hidden}/seed{seed}/baseline/eval/samples.npz",
        deferred="results/synthetic/dim{dim}/h{hidden}/seed{seed}/deferred/eval/samples.npz",
    output:
        projection="results/synthetic/dim{dim}/h{hidden}/seed{seed}/projection.npz",
    log:
        log_path("synthetic_projection", "dim{dim}_h{hidden}_seed{seed}"),
    benchmark:
        bench_path("synthetic_projection", "dim{dim}_h{hidden}_seed{seed}")
    conda:
        ENV
    threads: 1
    params:
        **stage_params("vqshrink.stages.synthetic_report.project"),
        settings={"points": 1500, "perplexity": 30.0},
        preset=PRESET,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- tables and figures
rule synthetic_table:
    input:
        metrics=[f"{run}/eval/metrics.json" for run in plan.main_runs()],
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
        **stage_params("vqshrink.stages.synthetic_report.tables"),
        settings={},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule embeddings_collapse:
    input:
        metrics=[f"{run}/eval/metrics.json" for run in plan.collapse_runs()],
        samples=[f"{run}/eval/samples.npz" for run in plan.collapse_runs()],
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
        **stage_params("vqshrink.stages.synthetic_report.embeddings_collapse"),
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
        **stage_params("vqshrink.stages.synthetic_report.fig2"),
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
        **stage_params("vqshrink.stages.synthetic_report.fig3_fig6"),
        settings={},
        preset=PRESET,
    script:
        STAGE_SCRIPT
