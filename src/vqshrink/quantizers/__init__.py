"""Quantizers (plain VQ, SimVQ, VAR multi-scale) and the shared nearest-code search."""

from vqshrink.quantizers.search import nearest_code, sq_dist_to_codes

__all__ = ["nearest_code", "sq_dist_to_codes"]
