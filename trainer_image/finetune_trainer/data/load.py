"""Read rows from JSONL, JSON, CSV and Parquet files, naming the file and line of anything malformed."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    data: dict[str, Any]
    file: str
    line: int

    def where(self) -> str:
        return f"{self.file} line {self.line}"


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED:
            raise InputError(f"{path.name}: unsupported file type {path.suffix!r} (use {', '.join(SUPPORTED)})")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED and p.name != "manifest.json")
    if not files:
        raise InputError(f"{path.name}/: no {', '.join(SUPPORTED)} files in the dataset folder")
    return files


def read_rows(path: Path) -> Iterator[Row]:
    for file in data_files(path):
        reader = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}[file.suffix.lower()]
        yield from reader(file)


def _jsonl(file: Path) -> Iterator[Row]:
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(
                    f"{file.name} line {number}: not valid UTF-8 ({error.reason} at byte {error.start})"
                ) from error
            if not text.strip():
                continue
            # Without its line break: an error at the end of the line would otherwise be reported at
            # column 1 of the next one (the decoder counts the newline).
            text = text.rstrip("\r\n")
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise InputError(
                    f"{file.name} line {number}: invalid JSON ({error.msg} at column {error.pos + 1})"
                ) from error
            if not isinstance(value, dict):
                raise InputError(f"{file.name} line {number}: expected a JSON object, got {type(value).__name__}")
            yield Row(value, file.name, number)


def _json(file: Path) -> Iterator[Row]:
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{file.name}: not valid UTF-8 ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{file.name} line {error.lineno}: invalid JSON ({error.msg})") from error
    rows = value.get("data") if isinstance(value, dict) else value
    if not isinstance(rows, list):
        raise InputError(f'{file.name}: expected a JSON list of objects (or {{"data": [...]}})')
    for number, item in enumerate(rows, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{file.name} item {number}: expected a JSON object, got {type(item).__name__}")
        yield Row(item, file.name, number)


def _csv(file: Path) -> Iterator[Row]:
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            for number, item in enumerate(csv.DictReader(handle), start=2):
                yield Row(dict(item), file.name, number)
    except UnicodeDecodeError as error:
        raise InputError(f"{file.name}: not valid UTF-8 ({error.reason} at byte {error.start})") from error
    except csv.Error as error:
        raise InputError(f"{file.name}: malformed CSV ({error})") from error


def _parquet(file: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{file.name}: not a readable Parquet file ({error})") from error
    for number, item in enumerate(table.to_pylist(), start=1):
        yield Row(item, file.name, number)
