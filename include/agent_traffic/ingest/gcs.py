"""gcsfs as the pipeline uses it (gs:// URLs); imported only when a gs:// URL is opened."""

from __future__ import annotations

from typing import Any

from gcsfs.core import GCSFileSystem


class GcsFileSystem(GCSFileSystem):
    """gcsfs's core class, which speaks the JSON API only (its default class first probes each
    bucket over gRPC for experimental bucket kinds), reading with plain read-ahead: the default
    "adaptive" cache prefetches in background tasks that readers stopping early (a Parquet footer,
    DuckDB's ranged reads) leave unfinished, and their HTTP connections then stay taken until a
    later request waits for one forever."""

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if kwargs.get("cache_type") is None:
            kwargs["cache_type"] = "readahead"
        return super()._open(path, mode, **kwargs)
