"""Fixtures for the trainer: a tiny tokenizer/model made on the spot, datasets written to temp files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinymodel import corpus_of, make_tiny_model, make_tokenizer, support_rows


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return make_tokenizer([*corpus_of(support_rows()), "user assistant system Paris capital France"])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus_of(support_rows()))


@pytest.fixture
def write(tmp_path: Path) -> Iterator[Any]:
    """write(name, rows_or_text) -> Path: JSONL for lists of dicts, raw bytes/text otherwise."""

    def _write(name: str, content: Any) -> Path:
        path = tmp_path / name
        if isinstance(content, list):
            path.write_text("".join(json.dumps(row) + "\n" for row in content))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    yield _write


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real MinIO server (go install github.com/minio/minio, via hack/build-tools.sh)."""
    from devcluster.minio import MinioServer

    server = MinioServer(tmp_path_factory.mktemp("minio")).start()
    yield server
    server.stop()
