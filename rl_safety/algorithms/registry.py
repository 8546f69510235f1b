"""Named functions at the algorithm's extension points (advantage estimators, policy losses, loss
aggregations). Adding a variant is one decorated function; configs select it by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Fn = TypeVar("Fn", bound=Callable)


class Registry(Generic[Fn]):
    """name -> function for one extension point; `kind` names it in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._functions: dict[str, Fn] = {}

    def register(self, name: str) -> Callable[[Fn], Fn]:
        """Decorator: make the function available as `name`. A second, different function under a
        taken name is an error (re-registering the same function, as a re-import does, is not)."""

        def decorator(fn: Fn) -> Fn:
            taken = self._functions.get(name)
            if taken is not None and taken is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({taken.__module__}.{taken.__qualname__})")
            self._functions[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Fn:
        try:
            return self._functions[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._functions)


def load_modules(paths: list[str]) -> None:
    """Import users' .py files (`algorithm.modules`); their decorators fill the registries. Loading
    a file twice (config validation, then a learner process) is a no-op."""
    import rewards

    for path in paths:
        rewards.load_module(path, kind="algorithm")
