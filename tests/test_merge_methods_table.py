"""Foundry's light copy of mergekit's method table matches the installed mergekit."""

from mergekit.merge_methods import registered_methods
from mergekit.merge_methods.base import ParameterScope

from foundry.recipe.merge_methods import METHODS

SPECS = {method.spec.name: method.spec for method in registered_methods()}


def test_same_methods() -> None:
    assert set(METHODS) == set(SPECS)


def test_same_parameters() -> None:
    for name, spec in SPECS.items():
        ours = METHODS[name]
        assert set(ours.accepted) == {p.name for p in spec.parameters}, name
        assert set(ours.required) == {p.name for p in spec.shared_parameters if p.required}, name
        assert set(ours.per_model) == {p.name for p in spec.input_parameters if p.required}, name
        for parameter in spec.input_parameters:
            # lint exempts the base model exactly where mergekit does: non-base parameters.
            assert (parameter.scope == ParameterScope.NON_BASE) == (ours.base != "ignored"), (name, parameter.name)


def test_same_input_contract() -> None:
    for name, spec in SPECS.items():
        contract = spec.contract
        assert METHODS[name].base == contract.base.value, name
        exact = contract.min_inputs if contract.min_inputs == contract.max_inputs else None
        assert METHODS[name].model_count == exact, name
        assert METHODS[name].min_models == (1 if exact else contract.min_inputs), name
        exact_non_base = contract.min_non_base if contract.min_non_base == contract.max_non_base else None
        assert METHODS[name].non_base_count == exact_non_base, name
