"""relative encodings (filled in by their area)."""
