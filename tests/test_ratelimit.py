"""The client's own rate limit: HitKeep's 429 says nothing about when to come back."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from agent_traffic.delivery.ratelimit import TokenBucket, limiter_for
from agent_traffic.devtools.samples import write_day
from agent_traffic.run.runner import run
from agent_traffic.run.runtime import Runtime
from agent_traffic.secrets import env_resolver
from tests.conftest import write_config
from tests.vendor_fixtures import DAY, HK_SITE, SEQ


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.t += s


def test_bucket_starts_empty_refills_to_the_burst_and_queues_callers_in_order() -> None:
    clock = FakeClock()
    b = TokenBucket(10, 20, clock=clock, sleep=clock.sleep)
    assert b.acquire() == 0.1  # empty at first: a new task never bursts into a used-up limit
    clock.t += 60  # idle: the bucket fills up to the burst, no further
    assert [b.acquire() for _ in range(20)] == [0.0] * 20
    assert b.acquire() == 0.1


def test_concurrent_callers_reserve_distinct_slots() -> None:
    b = TokenBucket(50, 1)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            b.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 20 and stamps[-1] - t0 >= 19 / 50 * 0.95  # 50/s, whatever the thread count


def test_one_bucket_per_instance_shared_by_destinations() -> None:
    a = limiter_for("https://hk.example.com", 10, 20)
    assert limiter_for("https://hk.example.com", 5, 10) is a and (a.rate, a.burst) == (5, 10)
    assert limiter_for("https://other.example.com", 10, 20) is not a


def test_delivery_keeps_under_hitkeeps_real_limit(tmp_path: Path, sandbox, api_key: str) -> None:
    """The receiver limits like HitKeep (10/s, burst 20, per client IP); the default client
    settings must never trip it, with several threads sending at once."""
    write_day(tmp_path / "logs", DAY, lines=300, files=1, tag="r")  # about 30 HitKeep events
    cfg = write_config(
        tmp_path / "c.yaml", staging=str(tmp_path / "st"), source_url=str(tmp_path / "logs") + "/{date:%Y/%m/%d}/*.gz",
        base_url=sandbox.url, fmt="combined", delivery={"concurrency": 4},
        extra_dest={"name": "hk", "vendor": "hitkeep", "site_id": HK_SITE, "send_older_events": True},
    )
    rt = Runtime.load(str(cfg), "rl")
    t0 = time.monotonic()
    s = run(rt, DAY, DAY, resolver=env_resolver({"SCRUNCH_API_KEY_EXAMPLE": api_key}), progress=lambda _m: None,
            now=datetime(2026, 11, 22, tzinfo=UTC))
    elapsed = time.monotonic() - t0
    sent = s["destinations"][0]["delivered"]
    assert s["ok"] and sent >= 15
    assert sandbox.requests_seen["hitkeep"] == {"202": sent}  # not a single 429
    assert elapsed >= (sent - 1) / 10 * 0.9
    assert len({SEQ.search(e["path"]).group(1) for e in sandbox.accepted("hitkeep", HK_SITE)}) == sent
