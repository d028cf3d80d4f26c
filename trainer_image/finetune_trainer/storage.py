"""Object storage behind URIs: s3:// (MinIO/S3 via the minio client), hf://, pvc:// and file://.

Publishing is atomic for readers: every file first, `manifest.json` (sha256 and size of each file
plus provenance) last, and a reader trusts only a prefix that has a manifest. Calls to S3 retry with
backoff on connection errors and then fail with `StorageUnavailable`, which names the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from finetune_operator.api.contract import PVC_MOUNT_ROOT, SecretRole, StorageSettings, secret_env_name

from .errors import InputError, StorageUnavailable

MANIFEST = "manifest.json"
T = TypeVar("T")


def retry_delays() -> tuple[float, ...]:
    """Backoff between S3 attempts; FINETUNE_STORAGE_RETRY_DELAYS (comma-separated seconds) overrides it."""
    raw = os.environ.get("FINETUNE_STORAGE_RETRY_DELAYS")
    return tuple(float(x) for x in raw.split(",") if x) if raw else (1.0, 2.0, 4.0, 8.0, 16.0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


class Store(Protocol):
    """What the trainer needs of a storage backend; keys are paths relative to the URI given."""

    def download_prefix(self, uri: str, dest: Path) -> None: ...
    def upload_file(self, src: Path, uri: str) -> None: ...
    def read_text(self, uri: str) -> str | None: ...
    def write_text(self, uri: str, text: str) -> None: ...
    def list_children(self, uri: str) -> list[str]: ...
    def delete_prefix(self, uri: str) -> int:
        """Delete every object under `uri`; the number deleted."""
        ...


@dataclass(frozen=True)
class LocalStore:
    """file:// and pvc:// (a PVC is mounted under PVC_MOUNT_ROOT; FINETUNE_PVC_ROOT overrides for local runs)."""

    def path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return Path(parsed.path)
        root = Path(os.environ.get("FINETUNE_PVC_ROOT", PVC_MOUNT_ROOT))
        return root / parsed.netloc / parsed.path.lstrip("/")

    def download_prefix(self, uri: str, dest: Path) -> None:
        source = self.path(uri)
        if source.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / source.name)
        elif source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            raise InputError(f"{uri}: no such file or folder")

    def upload_file(self, src: Path, uri: str) -> None:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.copy2(src, tmp)
        tmp.replace(target)

    def read_text(self, uri: str) -> str | None:
        path = self.path(uri)
        return path.read_text() if path.is_file() else None

    def write_text(self, uri: str, text: str) -> None:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        tmp.write_text(text)
        tmp.replace(target)

    def list_children(self, uri: str) -> list[str]:
        folder = self.path(uri)
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def delete_prefix(self, uri: str) -> int:
        root = self.path(uri)
        count = sum(1 for _ in _files(root)) if root.is_dir() else 0
        shutil.rmtree(root, ignore_errors=True)
        return count


def _s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class S3Store:
    """S3 or MinIO through the minio client, credentials from the role's secretKeyRef env vars."""

    def __init__(self, role: SecretRole, settings: StorageSettings, environ: Mapping[str, str]) -> None:
        from minio import Minio

        access = environ.get(secret_env_name(role, "AWS_ACCESS_KEY_ID"))
        secret = environ.get(secret_env_name(role, "AWS_SECRET_ACCESS_KEY"))
        if not access or not secret:
            raise InputError(
                f"no S3 credentials for the {role.lower().replace('_', ' ')}: set "
                f"{secret_env_name(role, 'AWS_ACCESS_KEY_ID')} and {secret_env_name(role, 'AWS_SECRET_ACCESS_KEY')} "
                "(in Kubernetes: the secretRef's Secret must hold AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                reason="MissingCredentials",
            )
        endpoint = environ.get(secret_env_name(role, "AWS_ENDPOINT_URL")) or settings.s3_endpoint or "s3.amazonaws.com"
        secure = settings.s3_secure
        if "://" in endpoint:
            parsed = urlparse(endpoint)
            endpoint, secure = parsed.netloc, parsed.scheme == "https"
        self.endpoint = endpoint
        self.client = Minio(
            endpoint,
            access_key=access,
            secret_key=secret,
            session_token=environ.get(secret_env_name(role, "AWS_SESSION_TOKEN")) or None,
            secure=secure,
            region=settings.s3_region,
            http_client=_http_client(),
        )

    def _call(self, what: str, call: Callable[[], T]) -> T:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        delays = retry_delays()
        for attempt, delay in enumerate((*delays, None), start=1):
            try:
                return call()
            except S3Error as error:
                if error.code in {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                    raise InputError(
                        f"{what}: {error.code} ({error.message})",
                        reason="StorageAccessDenied" if error.code != "NoSuchBucket" else "DataError",
                    ) from error
                if (
                    error.code not in {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}
                    or delay is None
                ):
                    raise
                time.sleep(delay)
            except ValueError as error:  # the client's own checks, e.g. an invalid bucket name
                raise InputError(f"{what}: {error}", reason="InvalidSpec") from error
            except (HTTPError, OSError) as error:
                if delay is None:
                    raise StorageUnavailable(
                        f"{what}: S3 endpoint {self.endpoint} unreachable after {attempt} tries ({error})"
                    ) from error
                time.sleep(delay)
        raise AssertionError("unreachable")

    def download_prefix(self, uri: str, dest: Path) -> None:
        bucket, key = _s3_location(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names = self._call(
            f"list {uri}", lambda: [o.object_name for o in self.client.list_objects(bucket, prefix=key, recursive=True)]
        )
        if key in names:  # a single object
            pairs = [(key, Path(key).name)]
        else:
            pairs = [(name, name[len(prefix) :]) for name in names if name.startswith(prefix)]
        if not pairs:
            raise InputError(f"{uri}: no such object or prefix")
        for name, relative in pairs:
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self._call(
                f"download s3://{bucket}/{name}", lambda n=name, t=target: self.client.fget_object(bucket, n, str(t))
            )

    def upload_file(self, src: Path, uri: str) -> None:
        bucket, key = _s3_location(uri)
        self._call(f"upload {uri}", lambda: self.client.fput_object(bucket, key, str(src)))

    def read_text(self, uri: str) -> str | None:
        from minio.error import S3Error

        bucket, key = _s3_location(uri)

        def get() -> str | None:
            try:
                response = self.client.get_object(bucket, key)
            except S3Error as error:
                if error.code == "NoSuchKey":
                    return None
                raise
            try:
                return bytes(response.read()).decode()
            finally:
                response.close()
                response.release_conn()

        return self._call(f"read {uri}", get)

    def write_text(self, uri: str, text: str) -> None:
        import io

        bucket, key = _s3_location(uri)
        data = text.encode()
        self._call(
            f"write {uri}",
            lambda: self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json"),
        )

    def list_children(self, uri: str) -> list[str]:
        bucket, key = _s3_location(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        objects = self._call(f"list {uri}", lambda: list(self.client.list_objects(bucket, prefix=prefix)))
        return sorted(o.object_name[len(prefix) :].rstrip("/") for o in objects if o.is_dir)

    def delete_prefix(self, uri: str) -> int:
        bucket, key = _s3_location(uri)
        names = self._call(
            f"list {uri}", lambda: [o.object_name for o in self.client.list_objects(bucket, prefix=key, recursive=True)]
        )
        for name in names:
            self._call(f"delete s3://{bucket}/{name}", lambda n=name: self.client.remove_object(bucket, n))
        return len(names)


def _http_client() -> Any:
    """Fewer internal retries than minio's default: our own backoff decides, and says so."""
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=10,
    )


class HubStore:
    """hf://org/name[@revision] (models) and hf://datasets/org/name[@revision][/file] (datasets); read-only."""

    def __init__(self, role: SecretRole, environ: Mapping[str, str]) -> None:
        self.token = environ.get(secret_env_name(role, "HF_TOKEN")) or None

    def download_prefix(self, uri: str, dest: Path) -> None:
        from huggingface_hub import snapshot_download

        repo_type, repo_id, revision, pattern = parse_hf_uri(uri)
        try:
            snapshot_download(
                repo_id=repo_id,
                repo_type=repo_type,
                revision=revision,
                token=self.token,
                local_dir=str(dest),
                allow_patterns=[pattern] if pattern else None,
            )
        except Exception as error:  # the hub raises many types; all mean "could not fetch"
            raise StorageUnavailable(f"{uri}: download from the Hugging Face Hub failed: {error}") from error

    def _read_only(self, *_: object) -> Any:
        raise InputError("hf:// URIs are read-only; publish to s3://, pvc:// or file://", reason="InvalidSpec")

    upload_file = write_text = delete_prefix = _read_only

    def read_text(self, uri: str) -> str | None:
        return None

    def list_children(self, uri: str) -> list[str]:
        return []


def parse_hf_uri(uri: str) -> tuple[str, str, str | None, str | None]:
    """(repo_type, repo_id, revision, file pattern) of hf://[datasets/]org/name[@rev][/path]."""
    rest = uri.removeprefix("hf://")
    repo_type = "model"
    if rest.startswith("datasets/"):
        repo_type, rest = "dataset", rest.removeprefix("datasets/")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InputError(f"{uri}: expected hf://[datasets/]org/name[@revision][/path]", reason="InvalidSpec")
    name, _, revision = parts[1].partition("@")
    pattern = "/".join(parts[2:]) or None
    return repo_type, f"{parts[0]}/{name}", revision or None, pattern


def store_for(uri: str, role: SecretRole, settings: StorageSettings, environ: Mapping[str, str]) -> Store:
    scheme = urlparse(uri).scheme
    if scheme in {"file", "pvc"}:
        return LocalStore()
    if scheme == "s3":
        return S3Store(role, settings, environ)
    if scheme == "hf":
        return HubStore(role, environ)
    raise InputError(
        f"{uri}: unsupported URI scheme {scheme!r} (use s3://, hf://, pvc:// or file://)", reason="InvalidSpec"
    )


def join(prefix: str, *parts: str) -> str:
    return prefix.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)


@dataclass(frozen=True)
class Published:
    uri: str
    manifest_sha256: str
    size_bytes: int


def publish(store: Store, src: Path, uri: str, metadata: Mapping[str, Any]) -> Published:
    """Upload every file of `src` under `uri`, then manifest.json; readers trust only what a manifest lists."""
    files: dict[str, dict[str, Any]] = {}
    for path in _files(src):
        relative = path.relative_to(src).as_posix()
        store.upload_file(path, join(uri, relative))
        files[relative] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = json.dumps({**metadata, "files": files}, indent=2, sort_keys=True)
    store.write_text(join(uri, MANIFEST), manifest)
    return Published(
        uri=uri.rstrip("/") + "/",
        manifest_sha256=hashlib.sha256(manifest.encode()).hexdigest(),
        size_bytes=sum(f["size"] for f in files.values()),
    )


def read_manifest(store: Store, uri: str) -> dict[str, Any] | None:
    text = store.read_text(join(uri, MANIFEST))
    return json.loads(text) if text else None


def fetch_verified(store: Store, uri: str, dest: Path) -> dict[str, Any]:
    """Download a published prefix and check every file against its manifest."""
    manifest = read_manifest(store, uri)
    if manifest is None:
        raise InputError(f"{uri}: no manifest.json, so not a complete publication")
    store.download_prefix(uri, dest)
    for relative, entry in manifest["files"].items():
        path = dest / relative
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise StorageUnavailable(f"{join(uri, relative)}: missing or corrupt (sha256 mismatch with the manifest)")
    return manifest


def fetch(store: Store, uri: str, dest: Path) -> str:
    """Download a model or dataset (a file or a prefix); returns a sha256 identifying what was read."""
    store.download_prefix(uri, dest)
    digest = hashlib.sha256()
    for path in _files(dest):
        digest.update(path.relative_to(dest).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
