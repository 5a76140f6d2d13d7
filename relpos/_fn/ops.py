"""ops: filled in by its area (see docs/INTERNALS.md)."""
__all__ = []
