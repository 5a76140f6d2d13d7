"""Fused kernels for the training step (perf area)."""
__all__ = []
