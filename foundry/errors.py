"""The one exception type that means "the user can fix this".

The CLI prints a UserError as one line and exits with code 2, without a traceback unless
`--debug` is given. Anything else is a bug in Foundry and keeps its traceback.
"""

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in the user's input: a recipe, a path, a flag, a store URL."""

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []

    def lines(self) -> list[str]:
        return [str(self), *self.details]
