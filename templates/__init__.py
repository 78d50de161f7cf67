"""Templates rendered by `lrnnx new-layer` (see issue #8)."""
