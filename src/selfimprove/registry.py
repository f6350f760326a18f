"""A small typed registry with lazy ``"module:Attr"`` entries and did-you-mean errors.

Plugins (problem sets, samplers, verifiers, filters, trainers) are looked up by name. Entries may be the
object itself or an import string, so ``import selfimprove`` never imports vLLM, TRL or GX::

    >>> r = Registry("sampler")
    >>> _ = r.register("echo", "builtins:str")
    >>> r.get("echo") is str
    True
    >>> r.get("ecoh")
    Traceback (most recent call last):
    ...
    selfimprove.registry.UnknownNameError: unknown sampler 'ecoh'; did you mean 'echo'? Known: echo
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists near matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None):
        """Register ``obj`` (or a ``"module:Attr"`` string) under ``name``; usable as a decorator."""
        if obj is None:
            def deco(o: T) -> T:
                self._entries[name] = o
                return o
            return deco
        self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _unknown(self, name: str) -> str:
        known = self.names()
        return f"unknown {self.kind} {name!r}{did_you_mean(name, known)} Known: {', '.join(known)}"

    def check(self, name: str) -> str:
        """``name`` if registered, else ``ValueError`` with the near matches (what a pydantic validator raises).

        >>> r = Registry("trainer")
        >>> _ = r.register("sft", "builtins:str")
        >>> r.check("sft"), r.check("stf")
        Traceback (most recent call last):
        ...
        ValueError: unknown trainer 'stf'; did you mean 'sft'? Known: sft
        """
        if name not in self._entries:
            raise ValueError(self._unknown(name))
        return name

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(self._unknown(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._entries[name] = obj
            entry = obj
        return entry  # type: ignore[return-value]
