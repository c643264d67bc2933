"""The model registry: presets for the models users fine-tune, memory estimates from a
model's shape, and the choice of a model that fits the hardware at hand.

Everything here is light (pyyaml and pydantic): `foundry models` and the planner use it
without importing torch.
"""
