"""A small name → object registry that also reads a Python entry-point group.

>>> shapes = Registry("shape")
>>> @shapes.register("square")
... def square(x): return x * x
>>> shapes.get("square")(3)
9
>>> shapes.get("sqare")
Traceback (most recent call last):
...
lcdense.base.errors.LcdenseError: unknown shape 'sqare'; did you mean 'square'? Known: square
>>> _ = shapes.register("cube", lambda x: x ** 3)
>>> [f(2) for f in shapes.values()]
[4, 8]
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from .errors import LcdenseError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered by name, in code or through a Python entry-point group.

    Args:
        kind: What the objects are, for error messages (e.g. ``"task"``).
        group: The entry-point group whose entries are registered too, loaded on first use;
            None: registrations in code only.
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind, self.group = kind, group
        self._objects: dict[str, T] = {}
        self._scanned: tuple[tuple[str, ...], list[EntryPoint]] | None = None

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` as ``name``; without ``obj``, return a decorator that registers its argument.

        Args:
            name: The name to register under.
            obj: The object; None to use the method as a decorator.

        Returns:
            ``obj``, or the decorator.

        Raises:
            LcdenseError: ``name`` is already registered for another object.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._objects and self._objects[name] is not obj:
            raise LcdenseError(f"{self.kind} '{name}' is already registered")
        self._objects[name] = obj
        return obj

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self.group is None:
            return {}
        if self._scanned is None or self._scanned[0] != tuple(sys.path):  # scanned again when the path changes
            self._scanned = (tuple(sys.path), list(entry_points(group=self.group)))
        return {ep.name: ep for ep in self._scanned[1] if ep.name not in self._objects}

    def names(self) -> list[str]:
        """All registered names, sorted.

        Returns:
            The names registered in code and in the entry-point group.
        """
        return sorted({*self._objects, *self._entry_points()})

    def values(self) -> list[T]:
        """Every object: those registered in code in the order they were, then the entry points' by name
        (loading them)."""
        listed = list(self._objects.values())
        return listed + [self.get(name) for name in sorted(self._entry_points())]

    def get(self, name: str) -> T:
        """The object registered as ``name``, loading its entry point on first use.

        Args:
            name: A registered name.

        Returns:
            The object.

        Raises:
            LcdenseError: An unknown ``name`` (the error lists the known ones and the closest
                match), or an entry point that fails to load.
        """
        if name in self._objects:
            return self._objects[name]
        found = self._entry_points()
        if name not in found:
            raise unknown_name(self.kind, name, self.names())
        try:
            self._objects[name] = found[name].load()
        except LcdenseError:  # e.g. a missing extra: its one line says what to install
            raise
        except Exception as exc:  # a broken plugin must say which one it is
            raise LcdenseError(f"{self.kind} '{name}' ({found[name].value}) failed to load: {exc}") from exc
        return self._objects[name]
