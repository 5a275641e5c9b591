"""Object storage through fsspec: local folders, S3 (and S3-compatible stores: MinIO, R2), Google
Cloud Storage and Azure Blob Storage, one interface; what differs between them is a `Scheme`.

All pipeline state lives under the staging root, so tasks of one run may land on different
workers. Writes are whole-object puts of finished files (a temporary name then a rename on local
disk; a single upload on object stores, visible only once complete), so a killed task never leaves
a half file behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

import fsspec
import orjson

from agent_traffic.config import ObjectStore
from agent_traffic.errors import ConfigError


@dataclass(frozen=True)
class GcsOptions:
    """Connection options for gs:// URLs; `token` is gcsfs's: None (Application Default
    Credentials), "anon", a service-account key file's path, or its parsed JSON."""

    project: str | None = None
    endpoint_url: str | None = None
    token: str | dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AzureOptions:
    """Connection options for az:// and abfs:// URLs. Unset fields fall back to adlfs's
    AZURE_STORAGE_* environment variables, then to Azure's default credential chain."""

    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    connection_string: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StoreOptions:
    """Connection options for object-store URLs (the S3 ones at the top level, for s3:// on AWS,
    MinIO, R2 or any S3-compatible store); credentials stay out of repr()."""

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # S3: a session token (an assumed role's)
    gcs: GcsOptions = GcsOptions()
    azure: AzureOptions = AzureOptions()

    @classmethod
    def from_config(cls, cfg: ObjectStore, env: Mapping[str, str] = os.environ) -> StoreOptions:
        return cls(
            endpoint_url=cfg.endpoint_url or env.get("AWS_ENDPOINT_URL"),
            region=cfg.region,
            key=env.get(cfg.access_key_env),
            secret=env.get(cfg.secret_key_env),
            gcs=GcsOptions(project=cfg.gcs.project, endpoint_url=cfg.gcs.endpoint_url,
                           token="anon" if cfg.gcs.anonymous else None),
            azure=AzureOptions(account_name=cfg.azure.account_name),
        )

    def with_connection(self, conn_type: str | None, login: str | None, password: str | None,
                        extra: Mapping[str, Any]) -> StoreOptions:
        """These options overlaid with an Airflow Connection's fields; its type says which store
        it is for (aws, google_cloud_platform, wasb or adls). The caller fetches the Connection."""
        overlay = _CONNECTION_TYPES.get(conn_type or "")
        if overlay is None:
            raise ConfigError(
                f"Airflow Connection type {conn_type!r} is not an object store's: use aws (S3, MinIO, R2), "
                f"google_cloud_platform (GCS), wasb or adls (Azure Blob Storage)"
            )
        return overlay(self, login, password, extra)

    def fsspec_kwargs(self, protocol: str) -> dict[str, Any]:
        return scheme(protocol).fsspec_kwargs(self)


def _aws_connection(o: StoreOptions, login: str | None, password: str | None, extra: Mapping[str, Any]) -> StoreOptions:
    """Type aws: login = access key, password = secret key, extra endpoint_url / region_name."""
    return replace(o, endpoint_url=extra.get("endpoint_url") or o.endpoint_url,
                   region=extra.get("region_name") or o.region, key=login or o.key, secret=password or o.secret)


def _extra(extra: Mapping[str, Any], conn_type: str, name: str) -> Any:
    """An extra field, under its plain name or the `extra__<type>__` prefix of older Connections."""
    return extra.get(name) or extra.get(f"extra__{conn_type}__{name}")


def _gcp_connection(o: StoreOptions, login: str | None, password: str | None, extra: Mapping[str, Any]) -> StoreOptions:
    """Type google_cloud_platform: extra keyfile_dict (the key's JSON), key_path, project,
    is_anonymous; none of them: Application Default Credentials."""
    get = partial(_extra, extra, "google_cloud_platform")
    keyfile = get("keyfile_dict")
    if isinstance(keyfile, str):
        try:
            keyfile = orjson.loads(keyfile)
        except orjson.JSONDecodeError:
            raise ConfigError("the google_cloud_platform Airflow Connection's keyfile_dict is not JSON: "
                              "paste the whole service-account key file into it") from None
    token: Any = keyfile or get("key_path")
    if str(get("is_anonymous")).lower() == "true":
        token = "anon"
    return replace(o, gcs=replace(o.gcs, project=get("project") or o.gcs.project, token=token or o.gcs.token))


def _azure_connection(o: StoreOptions, login: str | None, password: str | None, extra: Mapping[str, Any]) -> StoreOptions:
    """Types wasb and adls, as Airflow's Azure hooks read them: extra connection_string; or
    tenant_id with login = client id, password = client secret (a service principal); else
    login = account name with password, extra shared_access_key or sas_token as its key."""
    get = partial(_extra, extra, "wasb")
    a = o.azure
    if get("connection_string"):
        return replace(o, azure=replace(a, connection_string=get("connection_string")))
    account = get("account_name") or a.account_name
    if get("tenant_id"):
        return replace(o, azure=replace(a, account_name=account, tenant_id=get("tenant_id"),
                                        client_id=login, client_secret=password))
    return replace(o, azure=replace(a, account_name=login or account, sas_token=get("sas_token") or a.sas_token,
                                    account_key=get("shared_access_key") or password or a.account_key))


_CONNECTION_TYPES: dict[str, Callable[[StoreOptions, str | None, str | None, Mapping[str, Any]], StoreOptions]] = {
    "aws": _aws_connection,
    "google_cloud_platform": _gcp_connection,
    "wasb": _azure_connection,
    "adls": _azure_connection,
}


def _s3_kwargs(o: StoreOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if o.key:
        kw["key"] = o.key
    if o.secret:
        kw["secret"] = o.secret
    if o.token:
        kw["token"] = o.token
    client: dict[str, Any] = {}
    if o.endpoint_url:
        client["endpoint_url"] = o.endpoint_url
    if o.region:
        client["region_name"] = o.region
    if client:
        kw["client_kwargs"] = client
    return kw


def _set(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@dataclass(frozen=True)
class Scheme:
    """What differs between kinds of store, so the rest of the code asks instead of branching:
    how to open one, which listing field is an object's version, and whether it has the atomic
    create that leases need (fsspec's `pipe_file(mode="create")`: `If-None-Match: *` on S3 and
    Azure, `ifGenerationMatch=0` on GCS; a hard link on local disk, see `Store.create_exclusive`)."""

    name: str
    protocols: tuple[str, ...]
    version_keys: tuple[str, ...] = ()  # first one present; none: size and mtime tell versions apart
    mtime_keys: tuple[str, ...] = ("mtime",)
    atomic_create: bool = False
    remote_kwargs: Callable[[StoreOptions], dict[str, Any]] | None = None  # None: no options
    fs_class: str | None = None  # instead of fsspec's registered class

    def fsspec_kwargs(self, options: StoreOptions) -> dict[str, Any]:
        if self.remote_kwargs is None:
            return {}
        # a fresh instance that never answers from a cached listing: leases and exists() must see the store now
        return {"skip_instance_cache": True, "use_listings_cache": False, **self.remote_kwargs(options)}

    def filesystem(self, url: str, options: StoreOptions) -> tuple[fsspec.AbstractFileSystem, str]:
        if self.fs_class is None:
            return fsspec.core.url_to_fs(url, **self.fsspec_kwargs(options))
        module, _, name = self.fs_class.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**self.fsspec_kwargs(options)), cls._strip_protocol(url)


SCHEMES = (
    Scheme("local", ("file", "local")),
    Scheme("S3", ("s3", "s3a"), ("ETag",), ("LastModified",), atomic_create=True, remote_kwargs=_s3_kwargs),
    Scheme("GCS", ("gs", "gcs"), ("generation",), ("mtime", "updated"), atomic_create=True,
           remote_kwargs=lambda o: _set(project=o.gcs.project, endpoint_url=o.gcs.endpoint_url, token=o.gcs.token),
           fs_class="agent_traffic.ingest.gcs.GcsFileSystem"),
    Scheme("Azure Blob Storage", ("az", "abfs", "abfss"), ("etag",), ("last_modified",), atomic_create=True,
           remote_kwargs=lambda o: _set(**asdict(o.azure))),
)
_OTHER = Scheme("other", (), ("ETag", "etag"), ("mtime", "LastModified", "last_modified", "created"))


def scheme(protocol: str) -> Scheme:
    """The store kind of a protocol (`file` for plain paths)."""
    return next((s for s in SCHEMES if protocol in s.protocols), _OTHER)


def url_scheme(url: str) -> Scheme:
    """The store kind of a URL or a plain path."""
    return scheme(url.split("://", 1)[0] if "://" in url else "file")


def filesystem(url: str, options: StoreOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a URL."""
    return url_scheme(url).filesystem(url, options or StoreOptions())


@dataclass(frozen=True)
class ObjectInfo:
    url: str
    size: int
    etag: str | None
    mtime: float | None
    version: str | None = None  # the store's version of the object: S3 / Azure ETag, GCS generation


def _first(raw: Mapping[str, Any], keys: Iterable[str]) -> Any:
    return next((raw[k] for k in keys if raw.get(k) is not None), None)


def _info(kind: Scheme, protocol: str, path: str, raw: Mapping[str, Any]) -> ObjectInfo:
    etag = raw.get("ETag") or raw.get("etag")
    version = _first(raw, kind.version_keys)
    mtime = _first(raw, kind.mtime_keys)
    if isinstance(mtime, str):
        mtime = datetime.fromisoformat(mtime)
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    url = f"{protocol}://{path}" if protocol != "file" else f"file://{path}"
    return ObjectInfo(
        url=url,
        size=int(raw.get("size") or 0),
        etag=str(etag).strip('"') if etag else None,
        mtime=float(mtime) if mtime is not None else None,
        version=str(version).strip('"') if version is not None else None,
    )


def list_objects(url: str, options: StoreOptions | None = None) -> list[ObjectInfo]:
    """Objects matching a URL that is a glob (`*`, `?`, `[`) or a prefix (listed recursively)."""
    fs, path = filesystem(url, options)
    kind = url_scheme(url)
    protocol = kind.protocols[0] if kind.protocols else fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if any(c in path for c in "*?["):
        found = fs.glob(path, detail=True)
    elif not fs.exists(path):
        found = {}
    else:
        found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    out = [
        _info(kind, protocol, p, raw)
        for p, raw in found.items()
        if raw.get("type", "file") == "file" and not os.path.basename(p).startswith(".")
    ]
    if not out and protocol != "file":
        _bucket_must_exist(fs, protocol, path)
    return sorted(out, key=lambda o: o.url)


def _bucket_must_exist(fs: Any, protocol: str, path: str) -> None:
    """Nothing listed: a quiet day, unless the bucket itself is gone (or these credentials cannot
    see it), which would otherwise pass for a quiet day every night."""
    from agent_traffic.errors import StoreUnavailable

    bucket = path.split("/", 1)[0]
    if bucket and not any(c in bucket for c in "*?[") and not fs.exists(bucket):
        raise StoreUnavailable(f"bucket {protocol}://{bucket} does not exist, or the credentials given cannot "
                               "see it: check the source's url and the object_store settings (or its "
                               "Airflow Connection)")


def _finished_tmp(target: str, parts: Iterable[bytes], durable: bool) -> str:
    """A temporary file beside `target` holding the concatenated `parts` (fsynced if `durable`),
    ready to move in; removed if writing fails. `.tmp-` names are never listed."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _json(obj: Any) -> bytes:
    """Records as the store keeps them: indented, keys sorted (people read them)."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def _syncfs(folder: str) -> bool:
    """Flush the filesystem holding `folder` (Linux `syncfs`); False where there is none."""
    fn = getattr(_LIBC, "syncfs", None) if _LIBC is not None else None
    if fn is None:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return fn(fd) == 0
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class Store:
    """The staging root: relative keys in, whole-object reads and atomic writes out."""

    def __init__(self, root_url: str, options: StoreOptions | None = None) -> None:
        self.root_url = root_url.rstrip("/")
        self.options = options or StoreOptions()
        self.scheme = url_scheme(self.root_url)
        self.fs, self.root = filesystem(self.root_url, self.options)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({self.root_url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key.lstrip('/')}"

    def url(self, key: str) -> str:
        return f"{self.root_url}/{key.lstrip('/')}"

    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write atomically (readers see the old file or the new one, never a part).

        `durable=False` skips the fsync on local disk, for files that can be rebuilt and whose
        damage is detected (delivery chunks carry a hash of their body): an fsync costs more
        than writing a chunk, and only an operating-system crash could lose such a file.
        """
        target = self.path(key)
        if self.is_local:
            os.replace(_finished_tmp(target, (data,), durable), target)
        else:
            self.fs.pipe_file(target, data)

    def put_stream(self, key: str, parts: Iterable[bytes], *, durable: bool = True) -> int:
        """`put_bytes` of the concatenated `parts`, without holding them all in memory (a streamed
        upload on object stores: a failed one is discarded, nothing becomes visible); returns the size."""
        target = self.path(key)
        if self.is_local:
            os.replace(_finished_tmp(target, parts, durable), target)
            return os.path.getsize(target)
        size = 0
        f = self.fs.open(target, "wb")
        try:
            for part in parts:
                f.write(part)
                size += len(part)
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()  # the multipart upload is aborted
            f.closed = True  # or the file's finaliser would try to upload the discarded buffer
            raise
        f.close()
        return size

    def put_file(self, key: str, local_path: str) -> None:
        """Upload a finished local file (a single PUT, or a rename on local disk)."""
        target = self.path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.put_file(local_path, tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(local_path, target)

    def create_exclusive(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        """Create `key` only if it does not exist; False if it does. Atomic on local disk (a
        finished temporary file hard-linked to the name, which fails if the name exists, so a
        reader never sees the file empty) and on object stores (a conditional write: `If-None-Match: *`
        on S3 and Azure, `ifGenerationMatch=0` on GCS), so two workers racing for the same lease
        cannot both win.
        `durable=False`: no fsync on local disk, for files an OS crash may lose (a lease)."""
        target = self.path(key)
        if self.is_local:
            tmp = _finished_tmp(target, (data,), durable)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if not self.scheme.atomic_create:
            raise NotImplementedError(
                f"{self.root_url}: this store has no atomic create; use a local folder, S3, GCS or Azure Blob Storage"
            )
        try:
            self.fs.pipe_file(target, data, mode="create")
        except FileExistsError:
            return False
        return True

    def put_json(self, key: str, obj: Any, *, durable: bool = True) -> None:
        self.put_bytes(key, _json(obj), durable=durable)

    def create_json(self, key: str, obj: Any) -> bool:
        """`create_exclusive` of a JSON record (durable): False if `key` exists already."""
        return self.create_exclusive(key, _json(obj))

    def sync(self, keys: Iterable[str]) -> None:
        """Make files written with `durable=False` durable, with their renames (local disk; on
        object stores a PUT is durable when it returns). On Linux one `syncfs` of the staging
        filesystem does it for all of them (measured: 2 ms for 40 files, against 20-30 ms for
        an fsync each); elsewhere each file and its folder is fsynced."""
        if not self.is_local:
            return
        keys = list(keys)
        if keys and not _syncfs(self.root):
            for path in {self.path(k) for k in keys} | {os.path.dirname(self.path(k)) for k in keys}:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # removed meanwhile (a chunk re-planned): nothing to keep
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def get_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file: one chunk of a pack, without reading the pack."""
        return self.fs.cat_file(self.path(key), start=start, end=end)

    def get_json(self, key: str) -> Any:
        return orjson.loads(self.get_bytes(key))

    def get_json_or_none(self, key: str) -> Any | None:
        try:
            return self.get_json(key)
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        if self.is_local:  # a stat: delivery asks this several times per request
            return os.path.exists(self.path(key))
        return self.fs.exists(self.path(key))

    def list(self, prefix: str) -> list[str]:
        """Keys (relative to the root) of the finished files under a prefix, recursively."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return []
        n = len(self.root) + 1
        return sorted(
            p[n:] for p in self.fs.find(base) if ".tmp-" not in os.path.basename(p)
        )

    def iter_json(self, prefix: str) -> Iterator[tuple[str, Any]]:
        for key in self.list(prefix):
            if key.endswith(".json"):
                yield key, self.get_json(key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))
