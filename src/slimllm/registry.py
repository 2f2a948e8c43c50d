"""A named table of plug-ins (methods, export targets): one entry per name, registered once."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """``name -> plug-in``; :meth:`add` refuses a name registered twice (two plug-ins, one name)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, plug_in: T) -> T:
        name = plug_in.name
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = plug_in
        return plug_in
