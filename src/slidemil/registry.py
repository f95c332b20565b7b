"""Name -> class registries (objectives, pair samplers, MIL models, encoders), one rule for all.

A name is registered once: another class (or builder) under a taken name raises `duplicate_error`,
naming both; the same class again (its module imported anew) replaces the entry. Looking up a
name that is not registered raises a KeyError listing the registered names. `build` instantiates
by name: the caller's keyword arguments must all be accepted by the constructor (a config typo is
never silently dropped), and of the `offered` ones (what the trainer knows: an objective's output
width, a sampler's radius) the constructor gets those it names. Torch-free, so that
slidemil.plan.registered can apply the same rule while planning.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)

NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def duplicate_error(kind: str, name: str, first: str, second: str) -> KeyError:
    """The error of registering `name` twice; first, second: the two definitions' dotted paths."""
    return KeyError(f"{kind} {name!r} is registered twice: {first} and {second}")


def dotted(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def constructor_params(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of cls(...) (not *args, **kwargs)."""
    return {k: p for k, p in inspect.signature(cls).parameters.items() if p.kind in NAMED}


class Registry(dict[str, T]):
    """name -> entry, for one kind of thing ("objective"). `origin(entry)`: the class or function
    that defines an entry (the entry itself for class registries), named in duplicate errors."""

    def __init__(self, kind: str, origin: Callable[[T], Any] = lambda entry: entry) -> None:
        super().__init__()
        self.kind, self.origin = kind, origin

    def __missing__(self, name: str) -> T:
        raise KeyError(f"unknown {self.kind} {name!r}; choose one of {sorted(self)}")

    def add(self, name: str, entry: T) -> None:
        if name in self and dotted(self.origin(self[name])) != dotted(self.origin(entry)):
            raise duplicate_error(self.kind, name, dotted(self.origin(self[name])), dotted(self.origin(entry)))
        self[name] = entry

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: make the class available under `name` (a config picks it by name)."""

        def deco(cls: C) -> C:
            self.add(name, cls)  # type: ignore[arg-type]
            return cls

        return deco

    def params(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword parameters of the constructor of registered class `name`."""
        return constructor_params(self[name])  # type: ignore[arg-type]

    def build(self, name: str, /, offered: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Registered class `name` instantiated with `kwargs` (every one accepted, else TypeError) and
        the entries of `offered` its constructor names (kwargs win)."""
        cls = self[name]
        accepted = self.params(name)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
        unknown = set(kwargs) - set(accepted)
        if unknown and not takes_any:
            raise TypeError(f"{self.kind} {name!r} got unknown params {sorted(unknown)}; accepted: {sorted(accepted)}")
        chosen = {k: v for k, v in (offered or {}).items() if k in accepted and k not in kwargs}
        return cls(**chosen, **kwargs)  # type: ignore[operator]
