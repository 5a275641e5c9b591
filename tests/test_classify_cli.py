"""`agent-traffic classify`: user agents (and IPs) in on stdin, one JSON object per line out."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import yaml

from agent_traffic.annotate.ranges import snapshot_key
from agent_traffic.ingest.storage import Store

GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


def _classify(stdin: bytes, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "agent_traffic", "classify", *args], input=stdin,
                          capture_output=True, timeout=60, check=True)
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_one_json_object_per_input_line() -> None:
    lines = [
        f"{GPTBOT}\t20.171.206.10".encode(),
        f"{GPTBOT}\t203.0.113.9".encode(),
        b"Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Claude-User/1.0; +Claude-User@anthropic.com)",
        FIREFOX.encode(),
        b"",
        b"curl/8.5.0\tnot-an-ip",
        b"weird \xff\xfe bytes",
    ]
    out = _classify(b"\n".join(lines) + b"\n", "--date", "2026-02-11")
    assert len(out) == len(lines)
    gpt = out[0]
    assert (gpt["agent"], gpt["provider"], gpt["category"], gpt["purpose"]) == (
        "GPTBot", "openai", "AI Data Scraper", "training")
    assert (gpt["scrunch_type"], gpt["cloudflare_category"], gpt["is_ai"]) == ("training", "AI Crawler", True)
    assert gpt["matched"] == "GPTBot" and gpt["ip"] == "20.171.206.10" and gpt["verification"] == "verified"
    assert out[1]["verification"] == "spoofed"  # shipped gptbot.json (2026-02-11) is complete and fresh then
    assert out[2]["agent"] == "Claude-User" and out[2]["verification"] == "unverifiable"  # no IP given
    assert out[3]["agent"] == "human" and out[3]["verification"] is None and out[3]["is_bot"] is False
    assert out[4]["agent"] == "unknown" and out[4]["user_agent"] == ""
    assert out[5]["agent"] == "curl" and out[5]["verification"] == "unverifiable"
    assert out[6]["user_agent"] == "weird \ufffd\ufffd bytes"  # repaired, not a crash


def test_with_a_config_uses_its_catalog_and_stored_snapshots(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"version": 1, "agents": [
        {"name": "AcmeBot", "tokens": ["AcmeBot"], "provider": "unknown", "category": "AI Assistant",
         "purpose": "user_retrieval", "ai": True}]}))
    cfg = {"version": 1, "staging": "staging", "catalog_files": ["mine.yaml"],
           "sources": [{"name": "w", "url": "logs/{date:%Y}/*.gz", "site": "example.com"}],
           "sites": [{"name": "example.com"}], "ip_ranges": {"store": "ranges"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    Store(str(tmp_path / "ranges")).put_bytes(snapshot_key("openai-gptbot", date(2026, 11, 20)),
                                              b'{"prefixes": [{"ipv4Prefix": "192.0.2.0/24"}]}')
    stdin = f"{GPTBOT}\t192.0.2.1\n{GPTBOT}\t20.171.206.10\nAcmeBot/1.0\n".encode()
    out = _classify(stdin, "--config", str(tmp_path / "cfg.yaml"), "--date", "2026-11-21")
    assert [o["verification"] for o in out] == ["verified", "spoofed", "unverifiable"]
    assert out[2]["agent"] == "AcmeBot"


def test_a_bad_catalog_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  - name: x\n")
    proc = subprocess.run([sys.executable, "-m", "agent_traffic", "classify", "--catalog", str(bad)], input="",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"agent-traffic: {bad}: version: required field is missing")
