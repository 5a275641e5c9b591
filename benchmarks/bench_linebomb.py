"""Line bombs: peak memory of one object that expands to 10^8 blank or two-byte lines.

A few hundred KB of gzip can hold a hundred million short lines; memory bounded only by block
bytes once let such an object take 17.5 GB. Each case runs `steps.process_object` (parse,
classify, stage, commit) in a fresh process, as a task does, beside a normal combined object of
1,000,000 lines, and reports the child's peak RSS (`wait4`).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import yaml

from benchmarks.harness import DATA, ROOT, python_child, run_once

HERE = DATA / "linebomb"
LINES = 100_000_000
VALID = ('203.0.113.7 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 512 "-" '
         '"Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)"\n')

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, %(root)r + "/include")
path, cfg_path, out = sys.argv[1:4]
from agent_traffic.ingest.discover import ObjectRef
from agent_traffic.run.steps import process_object
from agent_traffic.run.runtime import Runtime
rt = Runtime.load(cfg_path, "bench")
t0 = time.perf_counter()
res = process_object(rt, ObjectRef("b" * 16, "file://" + path, os.path.getsize(path), None, None, "web", "2026-11-21"))
assert res.status == "staged", res.reason
json.dump({"seconds": time.perf_counter() - t0, "stats": res.stats}, open(out, "w"))
"""


def _bomb(name: str, line: bytes, n: int) -> Path:
    """One valid line, then `n` copies of `line`, gzip level 9 (made once, kept under .bench/)."""
    path = HERE / f"{name}-{n}.log.gz"
    if path.exists():
        return path
    HERE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    piece = line * (1 << 20)
    with gzip.open(tmp, "wb", compresslevel=9) as f:
        f.write(VALID.encode())
        for _ in range(n >> 20):
            f.write(piece)
        f.write(line * (n % (1 << 20)))
    tmp.rename(path)
    return path


def _config(staging: Path) -> Path:
    cfg = {"version": 1, "staging": str(staging),
           "sources": [{"name": "web", "url": "/unused/{date:%Y}/", "format": "combined", "site": "example.com"}],
           "sites": [{"name": "example.com"}]}
    p = staging.parent / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run(repeat: int, quick: bool) -> dict:
    n = 1_000_000 if quick else LINES
    from benchmarks.bench_parse import _generate

    cases = [("normal object: combined, 1,000,000 lines", _generate("combined", 100_000 if quick else 1_000_000)),
             (f"blank lines: 1 request + {n:,} empty lines", _bomb("blank", b"\n", n)),
             (f"two-byte lines: 1 request + {n:,} lines of 'a'", _bomb("short", b"a\n", n))]
    rows = []
    for label, path in cases:
        with tempfile.TemporaryDirectory() as d:
            cfg = _config(Path(d) / "staging")
            out = Path(d) / "out.json"
            wall, peak = run_once(python_child(CHILD % {"root": str(ROOT)}) + [str(path), str(cfg), str(out)])
            got = json.loads(out.read_text())
        st = got["stats"]
        rows.append({"case": label, "gzip KB": round(path.stat().st_size / 1024),
                     "lines read": st["lines_read"], "parsed": st["parsed"],
                     "blank (skipped)": st["skipped"].get("blank", 0), "quarantined": st["quarantined"],
                     "process_object s": round(got["seconds"], 1), "wall s": round(wall, 1),
                     "peak RSS MB": round(peak)})
    return {
        "title": "Line bombs: peak memory on 10^8 blank or two-byte lines",
        "setup": "One gzip object per row, read by `steps.process_object` (parse, classify, stage, commit) in a "
                 "fresh process, format `combined` set on the source; default parse settings (32 MiB blocks, at "
                 "most 262,144 lines per block). One run each.",
        "rows": rows,
        "notes": ["Memory is bounded by the lines in a block as well as its bytes: a flood of short lines is parsed "
                  "a quarter of a million lines at a time. Lines shorter than the format's shortest match are decided "
                  "without a DuckDB query: empty ones counted as blank, two-byte ones quarantined ('does not match "
                  "format combined') with their bytes."],
    }
