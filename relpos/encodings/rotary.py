"""rotary encodings (filled in by their area)."""
