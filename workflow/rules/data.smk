# Image datasets: each one decoded, resized and split ONCE, from the source paths
# under `datasets:` in config.yaml, into uint8 arrays with labels and recorded split lists
# (vqshrink.data.prepared) that training reads memory-mapped. A dataset whose source path
# is null stops the run before any job (plan.get_dataset_sources, common.smk).


wildcard_constraints:
    dataset="|".join(IMAGE_DATASETS),


rule prepare_dataset:
    input:
        unpack(plan.get_dataset_sources),
    output:
        data=directory("results/data/{dataset}"),
    log:
        log_path("prepare_dataset", "{dataset}"),
    benchmark:
        bench_path("prepare_dataset", "{dataset}")
    conda:
        ENV
    threads: DATASETS["resources"]["cpus_per_task"]
    resources:
        **plan.stage_resources("datasets"),
    params:
        **stage_params("vqshrink.stages.data.prepare_data"),
        settings=plan.data_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule smoke_sources:
    """Source data in the real on-disk layouts for the smoke preset, generated from
    config smoke_data (vqshrink.data.smoke_sources); the preset's dataset paths point here.
    """
    input:
        class_list=DATASETS["imagenet100"]["class_list"],
    output:
        imagenet100=directory(f"{SMOKE_ROOT}/imagenet100"),
        odir_images=directory(f"{SMOKE_ROOT}/odir/preprocessed_images"),
        odir_annotation=f"{SMOKE_ROOT}/odir/full_df.csv",
        cifar10=directory(f"{SMOKE_ROOT}/cifar10"),
    log:
        log_path("smoke_sources", "smoke_sources"),
    benchmark:
        bench_path("smoke_sources", "smoke_sources")
    conda:
        ENV
    threads: 1
    params:
        **stage_params("vqshrink.stages.smoke.smoke_sources"),
        settings=config["smoke_data"],
        preset=PRESET,
    script:
        STAGE_SCRIPT
