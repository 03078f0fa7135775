"""Immutable value classes without the dataclasses module.

Rule: a subclass names its fields in __slots__ and its __init__ sets each one once with
`init(self, name, value)`; equality, hashing, repr, copy and pickle then follow the fields as
those of a frozen dataclass do. Why not @dataclass(frozen=True): in tcpserver mode every
connection starts a new interpreter, and importing dataclasses (which imports inspect, ast,
dis, tokenize...) plus generating and compiling the methods of each class cost about 15 ms of
the connection's CPU; these classes cost nothing beyond their own bytecode.
"""

from __future__ import annotations

init = object.__setattr__      # the one way to set a field, used by the subclasses' __init__


class FrozenInstanceError(AttributeError):
    """Assigning to or deleting a field (dataclasses' exception of the same name)."""


class Frozen:
    """Base of the value classes. `_compare` names the fields that equality and hashing use
    (default: all of __slots__), as dataclasses' field(compare=False) excludes one."""

    __slots__ = ()
    _compare: tuple[str, ...] | None = None

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple[object, ...]:
        names = self._compare if self._compare is not None else self.__slots__
        return tuple([getattr(self, name) for name in names])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._key() == other._key()   # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__qualname__}({fields})"

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # copy.copy, copy.deepcopy and pickle: the __init__ takes the fields in __slots__ order.
        return self.__class__, tuple([getattr(self, name) for name in self.__slots__])

    def replace(self, **changes: object) -> Frozen:
        """A copy with some fields changed, checked by __init__ (dataclasses.replace)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        for name in changes:
            if name not in values:
                raise TypeError(f"{self.__class__.__qualname__} has no field {name!r}")
        values.update(changes)
        return self.__class__(**values)   # type: ignore[call-arg]
