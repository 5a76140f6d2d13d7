"""bias encodings (filled in by their area)."""
