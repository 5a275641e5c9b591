"""The delivery ledger has one owner: `ledger.py` builds every `_delivery/` key and record, the
records read back what earlier versions stored, and the delivery modules stay readable."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson

from agent_traffic.delivery.ledger import Ack, Chunk, DeadLetter, Ledger, Outcome, Stopped, TooOld
from agent_traffic.delivery.retry import Decision
from agent_traffic.ingest.storage import Store
from tests.conftest import REPO

PKG = REPO / "include" / "agent_traffic" / "delivery"
MAX_LINES = 60
DELIVERY_MODULES = ("deliver.py", "leases.py", "ledger.py", "plan.py")


def _long_functions(source: str) -> dict[str, int]:
    """Functions (methods and nested ones too) longer than MAX_LINES, with their line counts."""
    return {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_LINES}


def test_no_delivery_function_is_over_60_lines() -> None:
    long = {m: f for m in DELIVERY_MODULES if (f := _long_functions((PKG / m).read_text()))}
    assert long == {}


def test_the_length_check_sees_a_long_nested_function() -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    assert _long_functions(f"def outer():\n    def inner():\n{body}\n    return inner\n") == {
        "outer": MAX_LINES + 3, "inner": MAX_LINES + 1}
    assert _long_functions("def short():\n    return 1\n") == {}


def _chunk() -> Chunk:
    return Chunk("c1", 3, "obj1", 2, 10, 12, 1_700_000_000.0, "application/json", b"[1,2]", ((10, 10), (12, 12)))


def test_records_keep_the_stored_keys_and_shapes(tmp_path: Path) -> None:
    """The keys and JSON of records written before the Ledger existed (so old staging reads back)."""
    store = Store(str(tmp_path / "st"))
    lg = Ledger(store, "ka", "example.com", "2026-11-21")
    prefix = "_delivery/ka/site=example.com/date=2026-11-21"
    assert lg.prefix == prefix
    assert (lg.plan_key("obj1"), lg.pack_key("obj1.ab.pack"), lg.lease_key("obj1.u2", 3), lg.stop_key("r1")) == (
        f"{prefix}/plans/obj1.json", f"{prefix}/packs/obj1.ab.pack", f"{prefix}/leases/obj1.u2.3.json",
        "_delivery/ka/stopped/r1.json")
    ch = _chunk()
    lg.dead_letter(DeadLetter("c1", "obj1", 2, 422, "bad", 1, Decision.FATAL, "t0", "r1"))
    assert store.get_bytes(f"{prefix}/dead/c1.json") == orjson.dumps({
        "chunk_id": "c1", "object_id": "obj1", "events": 2, "status": 422, "vendor_answer": "bad",
        "attempts": 1, "outcome": "fatal", "failed_at": "t0", "run_id": "r1"},
        option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    ack = Ack.of(ch, 200, 2, "r2")
    lg.ack(ack)
    lg.flush_acks()
    assert store.get_json(f"{prefix}/acks/c1.json") == {
        "chunk_id": "c1", "object_id": "obj1", "index": 3, "events": 2, "first_line": 10, "last_line": 12,
        "lines": [[10, 10], [12, 12]], "status": 200, "attempts": 2, "acked_at": ack.acked_at, "run_id": "r2"}
    assert not store.exists(f"{prefix}/dead/c1.json")  # an ack replaces the dead letter
    lg.mark_too_old(TooOld("c2", "obj1", 5, "t1", "t2", "r3", "t3"))
    assert store.get_json(f"{prefix}/too_old/c2.json") == {
        "chunk_id": "c2", "object_id": "obj1", "events": 5, "oldest_event": "t1", "cutoff": "t2",
        "run_id": "r3", "expired_at": "t3"}
    lg.stop(Stopped("ka", 401, "no", "r1", "t4"))
    assert store.get_json("_delivery/ka/stopped/r1.json") == {
        "destination": "ka", "status": 401, "vendor_answer": "no", "run_id": "r1", "at": "t4"}
    assert (lg.acked_ids(), lg.too_old_ids(), lg.stopped("r1"), lg.stopped("r2")) == (["c1"], ["c2"], True, False)
    assert lg.finished("c1") and lg.finished("c2") and not lg.finished("c3")


def test_a_chunks_outcome_follows_the_documented_precedence() -> None:
    of = Outcome.of_chunk
    assert of(acked=True, too_old=True, dead=True, held=True) is Outcome.DELIVERED
    assert of(acked=False, too_old=True, dead=True, held=True) is Outcome.TOO_OLD
    assert of(acked=False, too_old=False, dead=True, held=True) is Outcome.FAILED
    assert of(acked=False, too_old=False, dead=False, held=True) is Outcome.HELD
    assert of(acked=False, too_old=False, dead=False, held=False) is Outcome.PENDING
    assert Outcome.TOO_OLD == "too_old" and orjson.dumps([Outcome.DELIVERED, Decision.STOP]) == b'["delivered","stop"]'
