"""A parse task never imports pandas.

pyarrow imports pandas the first time it is handed a Python or numpy value to convert, and that
cost a parse task 0.17 s of CPU under the GIL at its first block and 33 MB (`arrow_values.py`).
Every format's object, with hostile lines (not matching, invalid UTF-8, too long, short, blank),
a detected format and forwarded clients behind a trusted proxy, is parsed, classified and
staged in a fresh interpreter where importing pandas is recorded with its stack and refused.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.data.formats import samples

PROBE = r"""
import importlib.abc, json, sys, traceback

tried = []

class NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pandas" or name.startswith("pandas."):
            tried.append("".join(traceback.format_stack(limit=8)))
            raise ModuleNotFoundError("pandas is refused in this probe")
        return None

sys.meta_path.insert(0, NoPandas())
from agent_traffic.run.steps import discover_objects, process_object
from agent_traffic.run.runtime import Runtime

rt = Runtime.load(sys.argv[1], "imports")
found = discover_objects(rt, [__import__("datetime").date(2026, 11, 21)])
results = {ref.source: process_object(rt, ref) for ref in found.objects}
print(json.dumps({"tried": tried, "pandas": "pandas" in sys.modules,
                  "results": {k: [r.status, r.reason, r.stats.get("parsed"), r.stats.get("quarantined")]
                              for k, r in results.items()}}))
"""

HOSTILE = [b"this is not a log line at all, nor near one", b"\xff\xfe\xc3 broken \x80 bytes", b"x",
           b"", b"a" * 9000]


def _object(root: Path, name: str, lines: list[bytes]) -> None:
    folder = root / name / "2026/11/21"
    folder.mkdir(parents=True)
    (folder / "access.log.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))


def test_parsing_every_format_leaves_pandas_unimported(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    reqs = samples.requests(300, seed=11, unknown_every=7)
    sources = []
    for fid, render in samples.RENDERERS.items():
        lines = [text.encode() for text, _ in render(reqs)]
        _object(logs, fid, lines[:150] + HOSTILE + lines[150:])
        source = {"name": fid, "url": f"{logs}/{fid}/{{date:%Y/%m/%d}}/*.gz", "format": fid}
        sources.append(source if fid in samples.MULTI_HOST else {**source, "site": "example.com"})
    combined = [text.encode() for text, _ in samples.combined(reqs)]
    _object(logs, "detected", combined)
    sources.append({"name": "detected", "url": f"{logs}/detected/{{date:%Y/%m/%d}}/*.gz", "format": "auto",
                    "site": "example.com"})
    proxied = [text.encode() for text, _ in samples.nginx_main(reqs)]
    _object(logs, "proxied", proxied)
    sources.append({"name": "proxied", "url": f"{logs}/proxied/{{date:%Y/%m/%d}}/*.gz", "format": "nginx_main",
                    "site": "example.com", "trusted_proxies": ["0.0.0.0/0"]})
    cfg = {"version": 1, "staging": str(tmp_path / "staging"), "sources": sources,
           "parse": {"max_line_bytes": 4096},
           "sites": [{"name": "example.com", "hostnames": ["example.com", "www.example.com", "*.example.com"]},
                     {"name": "blog.example.org"}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["tried"], "pandas was imported from:\n" + "\n".join(report["tried"])
    assert report["pandas"] is False
    assert set(report["results"]) == {*samples.RENDERERS, "detected", "proxied"}
    for source, (status, reason, parsed, quarantined) in report["results"].items():
        assert status == "staged", (source, reason)
        assert parsed > 200, (source, parsed)
        if source in samples.RENDERERS:
            assert quarantined >= 3, (source, quarantined)  # the hostile lines are there, not lost
