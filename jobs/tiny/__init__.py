"""`tiny:` models: small, deterministic, built locally, for tests and the offline quick start."""
