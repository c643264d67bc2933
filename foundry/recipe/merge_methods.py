"""What Foundry knows of mergekit's merge methods, without importing mergekit.

`foundry lint` must answer in a fraction of a second, and mergekit imports torch. This
table mirrors mergekit 0.1.4's registry; tests/test_merge_methods_table.py fails when the
installed mergekit disagrees, so the two cannot drift apart silently.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MergeMethod:
    name: str
    needs_base_model: bool
    # Global parameters mergekit requires (no default).
    required: tuple[str, ...] = ()
    # Every parameter name mergekit accepts for the method, global or per model.
    accepted: tuple[str, ...] = ()
    # Exactly this many input models, when the method is defined only for that many.
    model_count: int | None = None


_SPARSE = ("int8_mask", "normalize", "rescale", "lambda", "weight", "density")

METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        MergeMethod("linear", False, accepted=("normalize", "weight")),
        MergeMethod("slerp", True, required=("t",), accepted=("t",), model_count=2),
        MergeMethod("nuslerp", False, accepted=("nuslerp_row_wise", "nuslerp_flatten", "weight")),
        MergeMethod("multislerp", False, accepted=("normalize_weights", "eps", "weight")),
        MergeMethod("karcher", False, accepted=("max_iter", "tol")),
        MergeMethod("task_arithmetic", True, accepted=_SPARSE),
        MergeMethod("ties", True, accepted=_SPARSE),
        MergeMethod("dare_ties", True, accepted=_SPARSE),
        MergeMethod("dare_linear", True, accepted=_SPARSE),
        MergeMethod("breadcrumbs", True, accepted=(*_SPARSE, "gamma")),
        MergeMethod("breadcrumbs_ties", True, accepted=(*_SPARSE, "gamma")),
        MergeMethod("della", True, accepted=(*_SPARSE, "epsilon")),
        MergeMethod("della_linear", True, accepted=(*_SPARSE, "epsilon")),
        MergeMethod("sce", True, accepted=("int8_mask", "select_topk")),
        MergeMethod("model_stock", True, accepted=("filter_wise",)),
        MergeMethod("nearswap", True, required=("t",), accepted=("t",)),
        MergeMethod("arcee_fusion", True),
        MergeMethod("passthrough", False, accepted=("scale",)),
    )
}

# Parameters whose meaning bounds their value: (low, high, low inclusive).
PARAMETER_RANGES: dict[str, tuple[float, float, bool]] = {
    "t": (0.0, 1.0, True),
    "density": (0.0, 1.0, False),
    "epsilon": (0.0, 1.0, True),
    "gamma": (0.0, 1.0, True),
    "select_topk": (0.0, 1.0, False),
}
