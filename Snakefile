# vqshrink: every table and figure of "Early Quantization Shrinks Codebook" as one DAG.
# This file is the table of contents. The experiment design (runs, paths, each stage's
# settings) is the package's plan, vqshrink.plan.experiments; workflow/rules/common.smk
# builds it from the config and checks it before any job.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dim=r"\d+",
    hidden=r"\d+",
    seed=r"\d+",
    schedule="baseline|deferred",


include: "workflow/rules/synthetic.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/generator.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/plan.smk"


rule all:
    default_target: True
    input:
        plan.all_targets(),
