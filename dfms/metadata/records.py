"""Row types from query records: a dataclass whose fields are named like the columns."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Row = TypeVar("Row", bound="DataclassInstance")


def from_record(cls: type[Row], record: asyncpg.Record | Mapping[str, Any], /,
                **given: Any) -> Row:
    """``cls`` with every field read from the column of the same name, except those in
    ``given``: values the caller converts or takes from another column.

    Fields are matched by name, not position, so a query may select more columns, in any
    order; a column it lacks is a KeyError rather than a field left at a wrong value.
    """
    values = {name: record[name] for name in _field_names(cls) if name not in given}
    return cls(**values, **given)


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))
