"""Notebook helpers: alibi_slopes, t5_bucket, relative_positions, rope_angles (filled in by the encodings areas)."""
__all__ = []
