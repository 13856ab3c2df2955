# Token-based generators (MaskGIT, VAR, LlamaGen): training, sampling, generation metrics,
# Tables 4, 6, 7, 8, 11, 12 and Fig. 5.


wildcard_constraints:
    generator="|".join(plan.generators),
    gen_table="|".join(GEN["tables"]),


rule generator_train:
    """A class-conditional generator on a tokenizer's train tokens (val tokens: plateau and
    early stopping)."""
    input:
        tokens_train="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/train.npy",
        tokens_val="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/val.npy",
        meta="results/tokenizers/{dataset}/{variant}/{schedule}/tokens/meta.json",
        tokenizer="results/tokenizers/{dataset}/{variant}/{schedule}/vq/model.pt",
    output:
        model="results/generators/{dataset}/{generator}/{variant}/{schedule}/model/model.pt",
        curve="results/generators/{dataset}/{generator}/{variant}/{schedule}/model/curve.csv",
        record="results/generators/{dataset}/{generator}/{variant}/{schedule}/model/run.json",
    log:
        log_path("generator_train", "{dataset}_{generator}_{variant}_{schedule}"),
    benchmark:
        bench_path("generator_train", "{dataset}_{generator}_{variant}_{schedule}")
    conda:
        ENV
    threads: plan.gen_resources("train")["cpus_per_task"]
    resources:
        **plan.gen_resources("train"),
    params:
        **stage_params("vqshrink.stages.generator.train"),
        settings=plan.gen_train_settings,
        preset=PRESET,
        state_dir=plan.gen_state,
    script:
        STAGE_SCRIPT


rule generator_sample:
    """A fixed, seeded number of samples in the test split's class proportions, decoded by
    the tokenizer."""
    input:
        model=rules.generator_train.output.model,
        tokenizer="results/tokenizers/{dataset}/{variant}/{schedule}/vq/model.pt",
        data="results/data/{dataset}",
    output:
        images="results/generators/{dataset}/{generator}/{variant}/{schedule}/samples/images.npy",
        labels="results/generators/{dataset}/{generator}/{variant}/{schedule}/samples/labels.npy",
        tokens="results/generators/{dataset}/{generator}/{variant}/{schedule}/samples/tokens.npy",
        grid="results/generators/{dataset}/{generator}/{variant}/{schedule}/samples/grid.png",
        record="results/generators/{dataset}/{generator}/{variant}/{schedule}/samples/run.json",
    log:
        log_path("generator_sample", "{dataset}_{generator}_{variant}_{schedule}"),
    benchmark:
        bench_path("generator_sample", "{dataset}_{generator}_{variant}_{schedule}")
    conda:
        ENV
    threads: plan.gen_resources("sample")["cpus_per_task"]
    resources:
        **plan.gen_resources("sample"),
    params:
        **stage_params("vqshrink.stages.generator.sample"),
        settings=plan.gen_sample_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule generator_eval:
    """g-FID against the test split, pixel distance and LPIPS diversity of the samples."""
    input:
        unpack(plan.get_gen_eval_inputs),
        images=rules.generator_sample.output.images,
        labels=rules.generator_sample.output.labels,
    output:
        metrics="results/generators/{dataset}/{generator}/{variant}/{schedule}/eval/metrics.json",
    log:
        log_path("generator_eval", "{dataset}_{generator}_{variant}_{schedule}"),
    benchmark:
        bench_path("generator_eval", "{dataset}_{generator}_{variant}_{schedule}")
    conda:
        ENV
    threads: plan.gen_resources("eval")["cpus_per_task"]
    resources:
        **plan.gen_resources("eval"),
    params:
        **stage_params("vqshrink.stages.generator.evaluate"),
        settings=plan.gen_eval_settings,
        preset=PRESET,
        weights=True,
    script:
        STAGE_SCRIPT


# ---------------------------------------------------------------- tables and figures
rule generator_table:
    """Tables 4, 6, 7, 8, 11, 12: the run's values beside the paper's."""
    input:
        unpack(plan.get_gen_table_inputs),
        paper="workflow/resources/paper_tables.csv",
    output:
        table=report(
            "results/tables/{gen_table}.csv",
            caption="../report/generation_table.rst",
            category="Generators",
            labels={"table": "{gen_table}"},
        ),
    log:
        log_path("generator_table", "{gen_table}"),
    benchmark:
        bench_path("generator_table", "{gen_table}")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.generator_report.table"),
        settings=plan.gen_table_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fig5:
    """Fig. 5: VAR samples w/o and w/ deferral, ImageNet-100 and ODIR side by side."""
    input:
        images=[f"{p['run']}/samples/images.npy" for p in plan.fig5_panels()],
        labels=[f"{p['run']}/samples/labels.npy" for p in plan.fig5_panels()],
    output:
        figure=report(
            "results/figures/fig5.png",
            caption="../report/fig5.rst",
            category="Generators",
        ),
    log:
        log_path("fig5", "fig5"),
    benchmark:
        bench_path("fig5", "fig5")
    conda:
        ENV
    params:
        **stage_params("vqshrink.stages.generator_report.fig5"),
        settings=plan.fig5_settings(),
        preset=PRESET,
    script:
        STAGE_SCRIPT
