"""The catalogue page Foundry publishes beside models.json, and where its scripts come from."""
