"""click commands, one module per group: they parse, call the core and print; no logic."""
