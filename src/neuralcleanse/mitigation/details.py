"""What a mitigation reports beyond before/after: typed fields per method that render themselves.

Each mitigation defines one :class:`MitigationDetails` dataclass next to its function and registers it
under its method name, so :meth:`MitigationResult.load` rebuilds it and the CLI and the HTML report show
it without knowing which method ran: ``lines()`` are sentences, ``table()`` an optional table,
``figures()`` optional PNGs. The saved JSON holds :meth:`to_dict`, the same keys the results always had.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

__all__ = [
    "DETAILS",
    "DetailsTable",
    "MitigationDetails",
    "RawDetails",
    "details_from_dict",
    "register_details",
]


@dataclass(frozen=True)
class DetailsTable:
    """A small table: column names (the first is the row name) and rows of formatted cells."""

    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]] = ()
    title: str = ""


class MitigationDetails:
    """Base of the per-method details (each subclass is a frozen dataclass)."""

    #: the method name the details belong to (``filter``, ``prune``, ``unlearn``)
    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe fields (what ``mitigation.json`` holds under ``details``)."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MitigationDetails:
        """The details from their JSON; fields a file of an earlier version lacks take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})

    def __getitem__(self, key: str) -> Any:
        """Read a field by its JSON key, as the untyped ``details`` dict of earlier versions was read."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def lines(self) -> list[str]:
        """Sentences on what the method did and found."""
        return []

    def table(self) -> DetailsTable | None:
        """An extra table (the pruning curve, the unlearning baselines), or None."""
        return None

    def figures(self, label: int) -> dict[str, bytes]:
        """PNG figures by file name (drawn on demand; matplotlib is imported only here)."""
        return {}

    def measured_on(self) -> str | None:
        """Which images the before/after numbers were measured on, when the method chose them."""
        return None


@dataclass(frozen=True)
class RawDetails(MitigationDetails):
    """The details of a method this version does not know: kept as read."""

    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RawDetails:
        return cls(dict(d))


#: details types by method name
DETAILS: dict[str, type[MitigationDetails]] = {}

_D = TypeVar("_D", bound=type[MitigationDetails])


def register_details(method: str) -> Callable[[_D], _D]:
    """Class decorator: the details type of ``method``."""

    def deco(cls: _D) -> _D:
        cls.method = method
        DETAILS[method] = cls
        return cls

    return deco


def details_from_dict(method: str, d: Mapping[str, Any]) -> MitigationDetails:
    """The typed details of ``method`` from their JSON (:class:`RawDetails` for an unknown method)."""
    if not isinstance(d, Mapping):
        raise TypeError(f"details must be an object, got {type(d).__name__}")
    return DETAILS.get(method, RawDetails).from_dict(d)
