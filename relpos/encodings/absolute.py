"""absolute encodings (filled in by their area)."""
