"""Workloads behind CLI commands that are not stages: `foundry query` and `foundry bench-variants`."""
