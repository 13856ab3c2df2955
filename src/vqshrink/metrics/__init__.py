"""Evaluation metrics, one module per family (e.g. fid, diversity)."""
