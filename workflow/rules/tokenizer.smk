# Image tokenizers with and without Deferred Quantization (paper Sec. 5, 6.1-6.3, App. A.1,
# A.4) and the CIFAR-10 codebook-size sweep (Fig. 4; older version Sec. 3.1.2, 5.2):
#   prepared data -> [autoencoder] -> k-means codebook -> VQ training -> evaluation
#   -> token maps; FID reference statistics once per split; tables 2, 3, 5, 9, 10; Fig. 4.


wildcard_constraints:
    variant="|".join([*TOK["variants"], r"vqvae-k\d+"]),
    arch="|".join([*TOK["architectures"], SWEEP_ARCH]),
    split="train|val|test",
    featnet="inception|inception_random|classifier",
    tok_table="|".join(TOK["tables"]),


# ---------------------------------------------------------------- metric networks
rule fetch_weights:
    """Download the pretrained FID/LPIPS weights the config needs into metrics.weights_dir.
    Run it where there is internet (a login node): `snakemake -c1 fetch_weights`."""
    output:
        record="results/weights/fetched.json",
    log:
        log_path("fetch_weights", "fetch_weights"),
    conda:
        ENV
    params:
        **stage_params("tokenizer.fetch_metric_weights"),
        settings=weights_to_fetch(),
        preset=PRESET,
        weights=True,
    script:
        STAGE_SCRIPT


rule fid_classifier:
    """The substitute FID feature network (fid_feature_net: classifier), labelled as such."""
    input:
        data="results/data/{dataset}",
    output:
        classifier="results/fid/{dataset}/classifier.pt",
        record="results/fid/{dataset}/classifier.json",
    log:
        log_path("fid_classifier", "{dataset}"),
    conda:
        ENV
    threads: METRICS["resources"]["cpus_per_task"]
    resources:
        **stage_resources("metrics"),
    params:
        **stage_params("tokenizer.train_fid_classifier"),
        settings=lambda w: {**METRICS["classifier"], "dataset": w.dataset},
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fid_reference:
    """Real-image FID statistics of one split, computed once and reused by every FID."""
    input:
        unpack(get_fid_classifier),
        unpack(get_ref_weights),
        data="results/data/{dataset}",
    output:
        stats="results/fid/{dataset}/{split}-{featnet}.npz",
    log:
        log_path("fid_reference", "{dataset}_{split}_{featnet}"),
    conda:
        ENV
    threads: METRICS["resources"]["cpus_per_task"]
    resources:
        **stage_resources("metrics"),
    params:
        **stage_params("tokenizer.fid_reference"),
        settings=lambda w: {
            "split": w.split,
            "fid": fid_settings(w.dataset),
            "device": TOK["training"]["device"],
        },
        preset=PRESET,
        weights=True,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- training
rule tokenizer_pretrain_ae:
    """Deferred schedule, phase 1: the autoencoder without VQ, one per (dataset, arch)."""
    input:
        unpack(get_train_weights),
        data="results/data/{dataset}",
    output:
        model="results/tokenizers/{dataset}/ae-{arch}/model.pt",
        curve="results/tokenizers/{dataset}/ae-{arch}/curve.csv",
        record="results/tokenizers/{dataset}/ae-{arch}/run.json",
    log:
        log_path("tokenizer_pretrain_ae", "{dataset}_{arch}"),
    benchmark:
        bench_path("tokenizer_pretrain_ae", "{dataset}_{arch}")
    conda:
        ENV
    threads: tok_threads("train")
    resources:
        **tok_resources("train"),
    params:
        **stage_params("tokenizer.pretrain_ae"),
        settings=tok_ae_settings,
        preset=PRESET,
        state_dir=lambda w: tok_state(w, "ae"),
        weights=True,
    script:
        STAGE_SCRIPT


rule tokenizer_init_codebook:
    """k-means codebook on embeddings of the untrained (baseline) or pretrained encoder."""
    input:
        unpack(get_tok_ae),
        data="results/data/{dataset}",
    output:
        init="results/tokenizers/{dataset}/{variant}/{schedule}/init/model.pt",
        embeddings="results/tokenizers/{dataset}/{variant}/{schedule}/init/embeddings.npz",
        record="results/tokenizers/{dataset}/{variant}/{schedule}/init/run.json",
    log:
        log_path("tokenizer_init_codebook", "{dataset}_{variant}_{schedule}"),
    conda:
        ENV
    threads: tok_threads("init")
    resources:
        **tok_resources("init"),
    params:
        **stage_params("tokenizer.init_codebook"),
        settings=tok_init_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule tokenizer_train_vq:
    """VQ training from scratch (baseline) or fine-tuning the autoencoder (deferred)."""
    input:
        unpack(get_val_fid),
        unpack(get_train_weights),
        data="results/data/{dataset}",
        init=rules.tokenizer_init_codebook.output.init,
    output:
        model="results/tokenizers/{dataset}/{variant}/{schedule}/vq/model.pt",
        curve="results/tokenizers/{dataset}/{variant}/{schedule}/vq/curve.csv",
        record="results/tokenizers/{dataset}/{variant}/{schedule}/vq/run.json",
    log:
        log_path("tokenizer_train_vq", "{dataset}_{variant}_{schedule}"),
    benchmark:
        bench_path("tokenizer_train_vq", "{dataset}_{variant}_{schedule}")
    conda:
        ENV
    threads: tok_threads("train")
    resources:
        **tok_resources("train"),
    params:
        **stage_params("tokenizer.train_vq"),
        settings=tok_train_settings,
        preset=PRESET,
        state_dir=lambda w: tok_state(w, "vq"),
        weights=True,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- evaluation, tokens
rule tokenizer_eval:
    """r-FID, MSE, LPIPS, codebook distance, perplexity, dead codes on the test split."""
    input:
        unpack(get_eval_fid),
        unpack(get_eval_weights),
        data="results/data/{dataset}",
        model=rules.tokenizer_train_vq.output.model,
    output:
        metrics="results/tokenizers/{dataset}/{variant}/{schedule}/eval/metrics.json",
        reconstructions="results/tokenizers/{dataset}/{variant}/{schedule}/eval/reconstructions.png",
    log:
        log_path("tokenizer_eval", "{dataset}_{variant}_{schedule}"),
    conda:
        ENV
    threads: tok_threads("eval")
    resources:
        **tok_resources("eval"),
    params:
        **stage_params("tokenizer.evaluate"),
        settings=tok_eval_settings,
        preset=PRESET,
        weights=True,
    script:
        STAGE_SCRIPT


rule tokenizer_tokens:
    """Token maps of every split (the generators' input)."""
    input:
        data="results/data/{dataset}",
        model=rules.tokenizer_train_vq.output.model,
    output:
        tokens_train="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/train.npy",
        tokens_val="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/val.npy",
        tokens_test="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/test.npy",
        meta="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/meta.json",
    log:
        log_path("tokenizer_tokens", "{dataset}_{variant}_{schedule}"),
    conda:
        ENV
    threads: tok_threads("eval")
    resources:
        **tok_resources("eval"),
    params:
        **stage_params("tokenizer.extract_tokens"),
        settings=lambda w: {
            "batch_size": METRICS["fid_batch_size"],
            "device": tok_experiment(w)["training"]["device"],
        },
        preset=PRESET,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- tables and Fig. 4
rule tokenizer_table:
    """Tables 2, 3, 5, 9, 10: the run's values beside the paper's, scaling in the header."""
    input:
        unpack(get_tok_table_inputs),
        paper="workflow/resources/paper_tables.csv",
    output:
        table=report(
            "results/tables/{tok_table}.csv",
            caption="../report/tokenizer_table.rst",
            category="Tokenizers",
            labels={"table": "{tok_table}"},
        ),
    log:
        log_path("tokenizer_table", "{tok_table}"),
    conda:
        ENV
    params:
        **stage_params("tokenizer_report.table"),
        settings=tok_table_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fig4:
    """Fig. 4: MSE, perplexity and codebook distance over codebook sizes, w/ and w/o deferral."""
    input:
        metrics=[f"{run}/eval/metrics.json" for run in sweep_runs()],
        records=[f"{run}/vq/run.json" for run in sweep_runs()],
    output:
        table=report(
            "results/tables/fig4.csv",
            caption="../report/fig4.rst",
            category="Tokenizers",
        ),
        figure=report(
            "results/figures/fig4.png",
            caption="../report/fig4.rst",
            category="Tokenizers",
        ),
    log:
        log_path("fig4", "fig4"),
    conda:
        ENV
    params:
        **stage_params("tokenizer_report.fig4"),
        settings={
            "paper_dataset": SWEEP["dataset"],
            "dataset": used_dataset(SWEEP["dataset"]),
            "codebook_sizes": SWEEP["codebook_sizes"],
        },
        preset=PRESET,
    script:
        STAGE_SCRIPT
