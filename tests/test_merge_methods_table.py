"""Foundry's light copy of mergekit's method table matches the installed mergekit."""

from mergekit.merge_methods import REGISTERED_MERGE_METHODS

from foundry.recipe.merge_methods import METHODS


def test_same_methods() -> None:
    assert set(METHODS) == set(REGISTERED_MERGE_METHODS)


def test_same_parameters() -> None:
    for name, method in REGISTERED_MERGE_METHODS.items():
        theirs = {p.name for p in method.parameters()} | {p.name for p in method.tensor_parameters()}
        required = {p.name for p in method.parameters() if p.required}
        assert set(METHODS[name].accepted) == theirs, name
        assert set(METHODS[name].required) == required, name
