"""A destination's key never appears in logs, the summary, the ledger, the outbox or an exception.

Five destinations (Scrunch, HitKeep, Known Agents; two sites), each with its own key, through the
command line as a user runs it: a dry run, a run with wrong keys (the vendors' answers are kept),
a run that cannot connect, a vendor that echoes the request back, and a good run. Afterwards every
byte the pipeline wrote or printed is searched for every key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from agent_traffic.config import Destination, SecretRef
from agent_traffic.delivery.deliver import _clean_key
from agent_traffic.errors import SecretMissing
from agent_traffic.secrets import Secret, env_resolver
from tests.vendor_fixtures import DAY, KEY_ENVS, fast_hitkeep, keys, three_vendor_config


def _cli(config: Path, env_keys: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{KEY_ENVS[d]: k for d, k in env_keys.items()}}
    return subprocess.run([sys.executable, "-m", "agent_traffic", "run", "--config", str(config), "--date", str(DAY),
                           *extra], env=env, capture_output=True, text=True, timeout=180)


class _Echo(BaseHTTPRequestHandler):
    """A careless vendor: its error answer quotes the request, headers included."""

    def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": "bad request", "you_sent": dict(self.headers)}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_keys_never_leak_for_any_vendor(tmp_path: Path) -> None:
    from agent_traffic.devtools.sandbox import Sandbox

    good = keys()
    wrong = {d: "wrong-" + k for d, k in good.items()}
    outputs: list[str] = []
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        with Sandbox(api_keys=good.values(), seed=3) as sb:
            fast_hitkeep(sb)
            opt_in = {"send_older_events": True}
            cfg = three_vendor_config(tmp_path / "c.yaml", tmp_path, sb.url, hitkeep=opt_in, knownagents=opt_in,
                                      delivery={"max_attempts": 2})
            outbox = tmp_path / "outbox"
            for run in (
                _cli(cfg, good, "--dry-run", "--outbox", str(outbox)),
                _cli(cfg, wrong, "--json", str(tmp_path / "wrong.json")),  # 401s: vendor answers kept
            ):
                outputs += [run.stdout, run.stderr]
            assert "HTTP 401" in outputs[-2]
            # One destination unreachable, one that quotes the request back: still nothing.
            broken = yaml.safe_load(cfg.read_text())
            for site in broken["sites"]:
                for d in site["destinations"]:
                    if d["name"] == "hitkeep-example":
                        d["base_url"] = "http://127.0.0.1:9"
                    if d["name"] == "knownagents-blog":
                        d["base_url"] = f"http://127.0.0.1:{echo.server_port}"
            (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
            run = _cli(tmp_path / "broken.yaml", good, "--destination", "hitkeep-example",
                       "--destination", "knownagents-blog")
            outputs += [run.stdout, run.stderr]
            assert "no answer after 2 attempt(s): connection error: could not connect to http://127.0.0.1:9" in run.stdout
            assert "HTTP 400" in run.stdout and "***" in run.stdout  # the echoed key, blanked
            run = _cli(cfg, good, "--json", str(tmp_path / "good.json"))  # and finally a good run
            outputs += [run.stdout, run.stderr]
            assert run.returncode == 0, run.stdout + run.stderr
            assert sum(len(sb.accepted(v)) for v in ("scrunch", "hitkeep", "known_agents")) > 0
    finally:
        echo.shutdown()
        echo.server_close()
    written = [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*")
               if p.is_file() and "logs" not in p.parts and p.suffix != ".gz"]
    assert any('"vendor_answer"' in w for w in written)  # dead letters exist and were searched
    assert list(outbox.rglob("*.json"))
    everything = "\n".join(outputs + written)
    for key in [*good.values(), *wrong.values()]:
        assert key not in everything


def test_a_key_with_a_trailing_newline_works_and_a_broken_one_is_refused_without_quoting_it() -> None:
    dest = Destination(name="hk", vendor="hitkeep", site_id="3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b",
                       base_url="http://127.0.0.1:9", secret=SecretRef(env="HK"))
    assert _clean_key(dest, Secret("abc-123\n")).reveal() == "abc-123"
    with pytest.raises(SecretMissing) as exc:
        _clean_key(dest, Secret("abc\r\ninjected: 1"))
    assert "abc" not in str(exc.value) and "control characters" in str(exc.value)


def test_missing_key_message_names_the_variable_not_a_value() -> None:
    dest = Destination(name="ka", vendor="knownagents", secret=SecretRef(env="KA_KEY"))
    with pytest.raises(SecretMissing, match="environment variable KA_KEY is not set"):
        env_resolver({})(dest)
    secret = env_resolver({"KA_KEY": "very-secret-value"})(dest)
    assert "very-secret-value" not in f"{secret} {secret!r} {secret:>20}"
