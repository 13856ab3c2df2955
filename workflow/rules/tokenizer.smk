# Image tokenizers with and without Deferred Quantization (paper Sec. 5, 6.1-6.3, App. A.1,
# A.4) and the CIFAR-10 codebook-size sweep (Fig. 4; older version Sec. 3.1.2, 5.2):
#   prepared data -> [autoencoder] -> k-means codebook -> VQ training -> evaluation
#   -> token maps; tables 2, 3, 5, 9, 10; Fig. 4. FID statistics: metrics.smk.


wildcard_constraints:
    variant="|".join(plan.tokenizer_variants()),
    arch="|".join([*TOK["architectures"], SWEEP_ARCH]),
    tok_table="|".join(TOK["tables"]),


# ---------------------------------------------------------------- training
rule tokenizer_pretrain_ae:
    """Deferred schedule, phase 1: the autoencoder without VQ, one per (dataset, arch)."""
    input:
        unpack(plan.get_train_weights),
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
    threads: plan.tok_threads("train")
    resources:
        **plan.tok_resources("train"),
    params:
        **stage_params("vqshrink.stages.tokenizer.pretrain_ae"),
        settings=plan.tok_ae_settings,
        preset=PRESET,
        state_dir=lambda w: plan.tok_state(w, "ae"),
        weights=True,
    script:
        STAGE_SCRIPT


rule tokenizer_init_codebook:
    """k-means codebook on embeddings of the untrained (baseline) or pretrained encoder."""
    input:
        unpack(plan.get_tok_ae),
        data="results/data/{dataset}",
    output:
        init="results/tokenizers/{dataset}/{variant}/{schedule}/init/model.pt",
        embeddings="results/tokenizers/{dataset}/{variant}/{schedule}/init/embeddings.npz",
        record="results/tokenizers/{dataset}/{variant}/{schedule}/init/run.json",
    log:
        log_path("tokenizer_init_codebook", "{dataset}_{variant}_{schedule}"),
    benchmark:
        bench_path("tokenizer_init_codebook", "{dataset}_{variant}_{schedule}")
    conda:
        ENV
    threads: plan.tok_threads("init")
    resources:
        **plan.tok_resources("init"),
    params:
        **stage_params("vqshrink.stages.tokenizer.init_codebook"),
        settings=plan.tok_init_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule tokenizer_train_vq:
    """VQ training from scratch (baseline) or fine-tuning the autoencoder (deferred)."""
    input:
        unpack(plan.get_val_fid),
        unpack(plan.get_train_weights),
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
    threads: plan.tok_threads("train")
    resources:
        **plan.tok_resources("train"),
    params:
        **stage_params("vqshrink.stages.tokenizer.train_vq"),
        settings=plan.tok_train_settings,
        preset=PRESET,
        state_dir=lambda w: plan.tok_state(w, "vq"),
        weights=True,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- evaluation, tokens
rule tokenizer_eval:
    """r-FID, MSE, LPIPS, codebook distance, perplexity, dead codes on the test split."""
    input:
        unpack(plan.get_eval_fid),
        unpack(plan.get_eval_weights),
        data="results/data/{dataset}",
        model=rules.tokenizer_train_vq.output.model,
    output:
        metrics="results/tokenizers/{dataset}/{variant}/{schedule}/eval/metrics.json",
        reconstructions="results/tokenizers/{dataset}/{variant}/{schedule}/eval/reconstructions.png",
    log:
        log_path("tokenizer_eval", "{dataset}_{variant}_{schedule}"),
    benchmark:
        bench_path("tokenizer_eval", "{dataset}_{variant}_{schedule}")
    conda:
        ENV
    threads: plan.tok_threads("eval")
    resources:
        **plan.tok_resources("eval"),
    params:
        **stage_params("vqshrink.stages.tokenizer_eval.evaluate"),
        settings=plan.tok_eval_settings,
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
    benchmark:
        bench_path("tokenizer_tokens", "{dataset}_{variant}_{schedule}")
    conda:
        ENV
    threads: plan.tok_threads("eval")
    resources:
        **plan.tok_resources("eval"),
    params:
        **stage_params("vqshrink.stages.tokenizer_eval.extract_tokens"),
        settings=plan.tok_tokens_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- tables and Fig. 4
rule tokenizer_table:
    """Tables 2, 3, 5, 9, 10: the run's values beside the paper's, scaling in the header."""
    input:
        unpack(plan.get_tok_table_inputs),
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
    benchmark:
        bench_path("tokenizer_table", "{tok_table}")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.tokenizer_report.table"),
        settings=plan.tok_table_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fig4:
    """Fig. 4: MSE, perplexity and codebook distance over codebook sizes, w/ and w/o deferral."""
    input:
        metrics=[f"{run}/eval/metrics.json" for run in plan.sweep_runs()],
        records=[f"{run}/vq/run.json" for run in plan.sweep_runs()],
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
    benchmark:
        bench_path("fig4", "fig4")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.tokenizer_report.fig4"),
        settings=plan.fig4_settings(),
        preset=PRESET,
    script:
        STAGE_SCRIPT
