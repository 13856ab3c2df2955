# vqshrink: every table and figure of "Early Quantization Shrinks Codebook" as one DAG.
# This file is the table of contents; helpers live in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
