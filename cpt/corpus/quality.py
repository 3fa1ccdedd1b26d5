"""Data-quality measurements of the documents table, shared by the asset checks and the tests."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def duplicate_count(column: pa.ChunkedArray | pa.Array) -> int:
    """How many values repeat an earlier one."""
    return len(column) - pc.count_distinct(column).as_py()


def empty_text_count(text: pa.ChunkedArray | pa.Array) -> int:
    """Null or whitespace-only texts."""
    if len(text) == 0:
        return 0
    blank = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    return int(pc.sum(pc.fill_null(blank, True)).as_py() or 0)


def schema_differences(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """What keeps ``actual`` from having ``expected``'s columns and types (nullability is not compared: Delta
    stores every column as nullable unless told otherwise)."""
    problems = []
    for field in expected:
        if field.name not in actual.names:
            problems.append(f"missing column {field.name}")
        elif not _same_type(actual.field(field.name).type, field.type):
            problems.append(f"{field.name}: {actual.field(field.name).type} instead of {field.type}")
    problems.extend(f"unexpected column {name}" for name in actual.names if name not in expected.names)
    return problems


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    widen = {
        pa.large_string(): pa.string(),
        pa.string_view(): pa.string(),
        pa.large_binary(): pa.binary(),
        pa.binary_view(): pa.binary(),
    }
    return widen.get(a, a) == widen.get(b, b)
