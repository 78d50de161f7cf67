"""Building blocks shared by built-in layers (not registered components)."""
