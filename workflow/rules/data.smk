# Image datasets (issue 3): each one decoded, resized and split ONCE, from the source paths
# under `datasets:` in config.yaml, into uint8 arrays with labels and recorded split lists
# (vqshrink.data.prepared) that training reads memory-mapped. A dataset whose source path
# is null stops the run before any job (get_dataset_sources, common.smk).


wildcard_constraints:
    dataset="|".join(IMAGE_DATASETS),


rule prepare_dataset:
    input:
        unpack(get_dataset_sources),
    output:
        data=directory("results/data/{dataset}"),
    log:
        log_path("prepare_dataset", "{dataset}"),
    conda:
        ENV
    threads: DATASETS["resources"]["cpus_per_task"]
    resources:
        **stage_resources("datasets"),
    params:
        **stage_params("tokenizer.prepare_data"),
        settings=data_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT
