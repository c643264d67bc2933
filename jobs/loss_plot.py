"""The loss curve of a fine-tune, as a PNG a person can glance at."""

from pathlib import Path
from typing import Any


def plot_losses(records: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Training loss per step and validation loss at each evaluation, on one chart. Written
    with matplotlib's Agg backend and no timestamp, so the same log gives the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(record["step"], record["loss"]) for record in records if "loss" in record]
    validation = [(record["step"], record["val_loss"]) for record in records if "val_loss" in record]
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1.0, alpha=0.8)
    if validation:
        axes.plot(*zip(*validation, strict=True), label="validation loss", marker="o", linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel("loss per completion token")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
