"""One small registry class behind every extension point (backbones, detectors, ...).

A name maps to a factory. A name ending in ``:`` is a *prefix* entry: ``"openclip:"`` serves every
``"openclip:<arch>"`` and receives the part after the colon as its first argument.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from vlm_ad.errors import ConfigError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory with a one-line description.

    Attributes:
        requires: importable module names the entry needs (checked by :meth:`missing`, never imported).
        install: how to install them (shown when one is missing).
        note: what else the entry needs that no install brings (e.g. "your CLIP weights").
    """

    name: str
    factory: Callable[..., T]
    description: str
    requires: tuple[str, ...] = ()
    install: str = ""
    note: str = ""

    def missing(self) -> list[str]:
        """The required modules that are not installed here."""
        import importlib.util

        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def status(self) -> str:
        """``"ready"``, what is missing and how to install it, or the note of what the user must bring."""
        if self.missing():
            return f"missing: {self.install or ', '.join(self.missing())}"
        return self.note or "ready"


class Registry(Generic[T]):
    """Maps names to factories for one kind of component (e.g. ``"backbone"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, description: str = "", requires: tuple[str, ...] = (), install: str = "",
                 note: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name`` (see :class:`Entry` for the other fields); registering a
        name twice raises."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            doc = description or (factory.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, factory, doc, tuple(requires), install, note)
            return factory

        return deco

    def entries(self) -> list[Entry[T]]:
        """All entries, sorted by name."""
        return [self._entries[k] for k in sorted(self._entries)]

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, optionally filtered by a shell-style pattern (``"dino*"``)."""
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the component registered as ``name`` (or served by a prefix entry)."""
        if name in self._entries and not name.endswith(":"):
            return self._call(name, self._entries[name].factory, (), kwargs)
        prefix, sep, rest = name.partition(":")
        if sep and f"{prefix}:" in self._entries:
            if not rest:
                raise ConfigError(f"{self.kind} name {name!r} needs a value after the colon, e.g. '{prefix}:<name>'")
            return self._call(name, self._entries[f"{prefix}:"].factory, (rest,), kwargs)
        raise UnknownNameError(self._unknown_message(name))

    def _call(self, name: str, factory: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
        """Call a factory after checking that it takes these settings (a clear error instead of a TypeError)."""
        sig = inspect.signature(factory)
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            takes = [p for p in sig.parameters if sig.parameters[p].kind is inspect.Parameter.KEYWORD_ONLY]
            raise ConfigError(f"{self.kind} {name!r}: {exc}; it takes {', '.join(takes) or 'no settings'}") from None
        return factory(*args, **kwargs)

    def _unknown_message(self, name: str) -> str:
        valid = self.names()
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        shown = ", ".join(n + "<...>" if n.endswith(":") else n for n in valid)
        return f"unknown {self.kind} {name!r}.{hint} Valid names: {shown}"
