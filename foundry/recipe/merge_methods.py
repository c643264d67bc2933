"""What Foundry knows of mergekit's merge methods, without importing mergekit.

`foundry lint` must answer in a fraction of a second, and mergekit imports torch. This
table mirrors mergekit 0.1.5's registry (each method's spec: its parameters with their
scope, and its input contract); tests/test_merge_methods_table.py fails when the installed
mergekit disagrees, so the two cannot drift apart silently.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MergeMethod:
    name: str
    # mergekit's base policy: "required", "optional" (used when named) or "ignored".
    base: str
    # Global parameters mergekit requires (no default).
    required: tuple[str, ...] = ()
    # Parameters each merged model needs (set on the model or globally); the base model is
    # exempt unless the method ignores the base. mergekit fails mid-merge without them.
    per_model: tuple[str, ...] = ()
    # Every parameter name mergekit accepts for the method, global or per model.
    accepted: tuple[str, ...] = ()
    # How many input models (the base among them) the method merges: exactly model_count,
    # or at least min_models; and exactly non_base_count besides the base, where it says so.
    model_count: int | None = None
    min_models: int = 1
    non_base_count: int | None = None

    @property
    def needs_base_model(self) -> bool:
        return self.base == "required"


_TASK_ARITHMETIC = ("int8_mask", "normalize", "rescale", "lambda", "weight", "density")


def _task_arithmetic(name: str, *extra: str) -> MergeMethod:
    return MergeMethod(name, "required", per_model=("weight",), accepted=(*_TASK_ARITHMETIC, *extra))


METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        MergeMethod("linear", "ignored", per_model=("weight",), accepted=("normalize", "weight")),
        MergeMethod("slerp", "required", required=("t",), accepted=("t",), model_count=2),
        MergeMethod("nuslerp", "optional", per_model=("weight",), accepted=("nuslerp_row_wise", "nuslerp_flatten", "weight"), non_base_count=2),
        MergeMethod("multislerp", "optional", per_model=("weight",), accepted=("normalize_weights", "eps", "weight")),
        MergeMethod("karcher", "ignored", accepted=("max_iter", "tol")),
        _task_arithmetic("task_arithmetic"),
        _task_arithmetic("ties"),
        _task_arithmetic("dare_ties"),
        _task_arithmetic("dare_linear"),
        _task_arithmetic("breadcrumbs", "gamma"),
        _task_arithmetic("breadcrumbs_ties", "gamma"),
        _task_arithmetic("della", "epsilon"),
        _task_arithmetic("della_linear", "epsilon"),
        MergeMethod("sce", "required", accepted=("int8_mask", "select_topk")),
        MergeMethod("ram", "required", accepted=("epsilon",)),
        MergeMethod("ramplus_tl", "required", accepted=("r", "alpha", "epsilon")),
        MergeMethod("model_stock", "required", accepted=("filter_wise",), min_models=3),
        MergeMethod("nearswap", "required", required=("t",), accepted=("t",), model_count=2),
        MergeMethod("arcee_fusion", "required", model_count=2),
        MergeMethod("passthrough", "ignored", accepted=("scale",), model_count=1),
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
