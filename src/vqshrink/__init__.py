"""vqshrink: Deferred Quantization experiments as one Snakemake DAG."""

__version__ = "0.1.0"
