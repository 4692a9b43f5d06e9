"""Settings: config precedence, presets, performance modes, aspect ratios."""
