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
        **stage_params("synthetic.make_data"),
        settings=syn_data_settings,
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
        **stage_resources("synthetic"),
    params:
        **stage_params("synthetic.pretrain_ae"),
        settings=lambda w: syn_train_settings(w, "pretrain"),
        preset=PRESET,
        state_dir=lambda w: syn_state(w, "ae"),
    script:
        STAGE_SCRIPT


rule synthetic_init_codebook:
    input:
        unpack(get_syn_ae),
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
        **stage_resources("synthetic"),
    params:
        **stage_params("synthetic.init_codebook"),
        settings=syn_init_settings,
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
        **stage_resources("synthetic"),
    params:
        **stage_params("synthetic.train_vq"),
        settings=lambda w: syn_train_settings(w, syn_vq_phase(w)),
        preset=PRESET,
        state_dir=lambda w: syn_state(w, "vq"),
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
        **stage_resources("synthetic"),
    params:
        **stage_params("synthetic.evaluate"),
        settings=lambda w: {**syn_model_settings(w), "schedule": w.schedule},
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
        **stage_params("synthetic_report.project"),
        settings={"points": 1500, "perplexity": 30.0},
        preset=PRESET,
    script:
        STAGE_SCRIPT
