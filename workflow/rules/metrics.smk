# Metric networks: the pretrained FID/LPIPS weights, the substitute FID classifier and the
# real-image FID statistics of each split (paper Sec. 6.1; metrics-offline notes).


wildcard_constraints:
    split="train|val|test",
    featnet="inception|inception_random|classifier",


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
        **stage_params("vqshrink.stages.metric_nets.fetch_metric_weights"),
        settings=plan.weights_to_fetch(),
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
    benchmark:
        bench_path("fid_classifier", "{dataset}")
    conda:
        ENV
    threads: METRICS["resources"]["cpus_per_task"]
    resources:
        **plan.stage_resources("metrics"),
    params:
        **stage_params("vqshrink.stages.metric_nets.train_fid_classifier"),
        settings=plan.classifier_settings,
        preset=PRESET,
    script:
        STAGE_SCRIPT


rule fid_reference:
    """Real-image FID statistics of one split, computed once and reused by every FID."""
    input:
        unpack(plan.get_fid_classifier),
        unpack(plan.get_ref_weights),
        data="results/data/{dataset}",
    output:
        stats="results/fid/{dataset}/{split}-{featnet}.npz",
    log:
        log_path("fid_reference", "{dataset}_{split}_{featnet}"),
    benchmark:
        bench_path("fid_reference", "{dataset}_{split}_{featnet}")
    conda:
        ENV
    threads: METRICS["resources"]["cpus_per_task"]
    resources:
        **plan.stage_resources("metrics"),
    params:
        **stage_params("vqshrink.stages.metric_nets.fid_reference"),
        settings=plan.fid_reference_settings,
        preset=PRESET,
        weights=True,
    script:
        STAGE_SCRIPT
