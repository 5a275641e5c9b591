"""Parsing allocates from a pool that hands freed memory back: the pool it sets, and the user's choice kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INCLUDE = Path(__file__).resolve().parents[1] / "include"
CHILD = """
import pyarrow as pa
from agent_traffic.formats import load_formats
from agent_traffic.ingest.parse import ParseContext, parse_blocks
ctx = ParseContext("obj0000000000001", "file:///logs/a.log", load_formats()["combined"], "example.com",
                   "example.com", "https", {}, 65536)
line = b'1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8"\\n'
blocks = list(parse_blocks(iter([line * 5000]), ctx, 1 << 16))
assert sum(b.events.num_rows for b in blocks) == 5000
print(pa.default_memory_pool().backend_name)
"""


def _pool_after_parsing(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**base, "PYTHONPATH": str(INCLUDE), **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_parsing_allocates_from_jemalloc() -> None:
    import pyarrow as pa

    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow is built without jemalloc")
    assert _pool_after_parsing() == "jemalloc"


def test_a_pool_the_user_names_is_kept() -> None:
    assert _pool_after_parsing(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
