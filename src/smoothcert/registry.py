"""A tiny name → factory registry shared by noises, models, datasets and training methods.

Each family keeps one `Registry`; the public `register_*` / `get_*` / `list_*` functions of a
module are thin aliases of it, so the CLI and the parametrised tests see the same entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import InputError, InputTypeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to factories (classes or functions) of one kind of object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("name")`` adds a factory under ``name``."""
        key = name.lower()

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if key in self._entries:
                raise InputError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = factory
            return factory

        return add

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``; a clear error listing the known names otherwise."""
        if not isinstance(name, str):
            raise InputTypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name.lower()]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise InputError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, /, **kwargs: object) -> T:
        """Build the entry ``name`` with keyword arguments."""
        return self.factory(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
