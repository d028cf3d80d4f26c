"""Storage: atomic publishing (manifest last), verification, retries, and what a user sees when it breaks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.api.contract import StorageSettings
from finetune_trainer.errors import InputError, StorageUnavailable
from finetune_trainer.storage import (
    LocalStore,
    fetch,
    fetch_verified,
    parse_hf_uri,
    publish,
    read_manifest,
    store_for,
)


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    (folder / "nested").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "nested" / "weights.bin").write_bytes(b"\x00" * 1000)
    return folder


def test_local_publish_writes_the_manifest_last_and_verifies(tmp_path: Path) -> None:
    store = LocalStore()
    uri = f"file://{tmp_path}/out/adapter/"
    published = publish(store, _folder(tmp_path), uri, {"kind": "adapter"})
    manifest = read_manifest(store, uri)
    assert manifest is not None and manifest["kind"] == "adapter"
    assert set(manifest["files"]) == {"adapter_config.json", "nested/weights.bin"}
    assert published.size_bytes == 1008
    fetched = fetch_verified(store, uri, tmp_path / "copy")
    assert fetched == manifest and (tmp_path / "copy" / "nested" / "weights.bin").stat().st_size == 1000
    (tmp_path / "out" / "adapter" / "nested" / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(StorageUnavailable, match="sha256 mismatch"):
        fetch_verified(store, uri, tmp_path / "copy2")


def test_a_prefix_without_manifest_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_model.safetensors").write_bytes(b"partial")
    with pytest.raises(InputError, match=r"no manifest\.json"):
        fetch_verified(LocalStore(), f"file://{tmp_path}/half/", tmp_path / "copy")


def test_s3_round_trip_on_real_minio(minio: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minio.bucket("adapters")
    env = minio.credentials_env("OUTPUT")
    settings = StorageSettings(s3_endpoint=minio.url, s3_secure=False)
    store = store_for("s3://adapters/x/", "OUTPUT", settings, env)
    uri = "s3://adapters/team/job/uid/attempt-1/adapter/"
    published = publish(store, _folder(tmp_path), uri, {"kind": "adapter"})
    assert published.uri == uri
    names = [o.object_name for o in minio.client().list_objects("adapters", prefix="team/", recursive=True)]
    assert sorted(names) == [
        uri.removeprefix("s3://adapters/") + n for n in ("adapter_config.json", "manifest.json", "nested/weights.bin")
    ]
    assert json.loads(store.read_text(uri + "manifest.json") or "{}")["files"]["nested/weights.bin"]["size"] == 1000
    fetch_verified(store, uri, tmp_path / "copy")
    assert store.list_children("s3://adapters/team/job/uid/") == ["attempt-1"]
    digest = fetch(store, uri + "adapter_config.json", tmp_path / "single")
    assert (tmp_path / "single" / "adapter_config.json").read_text() == '{"r": 8}' and len(digest) == 64
    store.delete_prefix("s3://adapters/team/")
    assert list(minio.client().list_objects("adapters", prefix="team/", recursive=True)) == []


def test_missing_credentials_say_which_variables(minio: Any) -> None:
    with pytest.raises(InputError) as caught:
        store_for("s3://data/train.jsonl", "DATASET", StorageSettings(s3_endpoint=minio.url, s3_secure=False), {})
    assert caught.value.reason == "MissingCredentials"
    assert "FINETUNE_DATASET_AWS_ACCESS_KEY_ID" in str(caught.value)


def test_wrong_credentials_are_not_retried(minio: Any) -> None:
    env = {"FINETUNE_DATASET_AWS_ACCESS_KEY_ID": "nobody", "FINETUNE_DATASET_AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    store = store_for("s3://data/", "DATASET", StorageSettings(s3_endpoint=minio.url, s3_secure=False), env)
    with pytest.raises(InputError, match="InvalidAccessKeyId"):
        store.download_prefix("s3://data/train.jsonl", Path("/tmp/never"))


def test_missing_object_is_a_data_error(minio: Any, tmp_path: Path) -> None:
    minio.bucket("data")
    store = store_for(
        "s3://data/",
        "DATASET",
        StorageSettings(s3_endpoint=minio.url, s3_secure=False),
        minio.credentials_env("DATASET"),
    )
    with pytest.raises(InputError, match=r"s3://data/absent\.jsonl: no such object or prefix"):
        store.download_prefix("s3://data/absent.jsonl", tmp_path)


def test_unreachable_store_fails_after_retries_naming_the_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from devcluster.controlplane import free_port

    monkeypatch.setenv("FINETUNE_STORAGE_RETRY_DELAYS", "0.05,0.05")
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"FINETUNE_OUTPUT_AWS_ACCESS_KEY_ID": "a", "FINETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY": "b"}
    store = store_for("s3://adapters/", "OUTPUT", StorageSettings(s3_endpoint=endpoint, s3_secure=False), env)
    with pytest.raises(StorageUnavailable) as caught:
        store.write_text("s3://adapters/manifest.json", "{}")
    assert f"S3 endpoint {endpoint.removeprefix('http://')} unreachable after 3 tries" in str(caught.value)


def test_hf_uris() -> None:
    assert parse_hf_uri("hf://meta-llama/Llama-3.1-8B@main") == ("model", "meta-llama/Llama-3.1-8B", "main", None)
    assert parse_hf_uri("hf://datasets/org/set/train.jsonl") == ("dataset", "org/set", None, "train.jsonl")
    with pytest.raises(InputError, match="expected hf://"):
        parse_hf_uri("hf://just-a-name")
    with pytest.raises(InputError, match="unsupported URI scheme 'ftp'"):
        store_for("ftp://x/y", "DATASET", StorageSettings(), {})


def test_invalid_bucket_name_is_bad_input(minio: Any) -> None:
    store = store_for(
        "s3://x/", "OUTPUT", StorageSettings(s3_endpoint=minio.url, s3_secure=False), minio.credentials_env("OUTPUT")
    )
    with pytest.raises(InputError, match="invalid bucket name x"):
        store.write_text("s3://x/manifest.json", "{}")
