"""The work behind each CLI command, one module per command family, imported lazily."""
