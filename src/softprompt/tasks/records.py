"""Reading raw records (JSONL, CSV, TSV) with errors that name the file, line and field."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from softprompt.tasks.base import TaskDataError


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8-sig")


def read_records(path: Path, *, header: bool = True, fieldnames: list[str] | None = None
                 ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a .jsonl/.json(.gz), .csv or .tsv file."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskDataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise TaskDataError(f"{path}:{lineno}: expected a JSON object per line")
                yield lineno, record
        return
    if name.endswith((".tsv", ".csv")):
        delimiter = "\t" if name.endswith(".tsv") else ","
        with _open_text(path) as f:
            # GLUE tsv files contain unbalanced quotes: read them without quote handling.
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            names = fieldnames
            for lineno, row in enumerate(reader, 1):
                if names is None and header:
                    names = row
                    continue
                if names is None:
                    raise TaskDataError(f"{path}: no header and no field names given")
                if len(row) != len(names):
                    raise TaskDataError(f"{path}:{lineno}: expected {len(names)} fields {names}, got {len(row)}")
                yield lineno, dict(zip(names, row, strict=True))
        return
    raise TaskDataError(f"{path}: unsupported data file type (use .jsonl, .json, .csv or .tsv)")


def field(record: Mapping[str, Any], key: str, path: Path, lineno: int) -> Any:
    """record[key], or a TaskDataError naming the file, line and missing field."""
    if key not in record:
        raise TaskDataError(f"{path}:{lineno}: missing field {key!r} (fields: {', '.join(map(str, record))})")
    return record[key]
