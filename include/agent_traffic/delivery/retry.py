"""When to retry a request, and how long to wait (Vector's policy, AWS full jitter).

Retry 408, 429 and 5xx (except 501) and connection errors; honour Retry-After (seconds or an
HTTP-date, capped); never retry any other 4xx. Waits are `uniform(0, min(cap, base * 2**n))`, also
for a 429 without Retry-After (HitKeep's, Known Agents'). 401, 403 and 404 mean the destination
itself is wrong (key, grant, site id): every further request would fail the same way, so the
caller stops sending to it.
A connection error after the connection was made (a reset, a read timeout) may mean the vendor
stored the body: the retry is counted as a possible duplicate, since none of the vendors
de-duplicates. A connection that was never made is retried without that count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError
from urllib3.util import parse_url

from agent_traffic.config import DeliveryPolicy
from agent_traffic.redact import scrub


class Decision(StrEnum):
    """What to do after an answer (Vector's RetryAction), decided in this order of precedence: a
    status in the vendor's success set is SUCCESS; else 401/403/404 is STOP; else 408, 429 and 5xx but 501 are RETRY; anything else is FATAL. A send
    whose attempts run out ends as RETRY; a request that could not be built ends as STOP."""

    SUCCESS = "success"
    STOP = "stop"  # key, grant or site id is wrong: stop sending to this destination
    RETRY = "retry"
    FATAL = "fatal"  # this request will never succeed as is


SUCCESS, STOP, RETRY, FATAL = Decision.SUCCESS, Decision.STOP, Decision.RETRY, Decision.FATAL
STOP_STATUSES = frozenset({401, 403, 404})
ANSWER_CHARS = 2000  # of a vendor's answer kept (dead letters, summaries)
ANSWER_READ = 65536  # bytes of it scrubbed before the cut, so no key straddles the cut


def decide(status: int, success: frozenset[int]) -> Decision:
    if status in success:
        return SUCCESS
    if status in STOP_STATUSES:
        return STOP
    if status in (408, 429) or (500 <= status <= 599 and status != 501):
        return RETRY
    return FATAL


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**attempt)), attempt counted from 0."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


def _not_connected(url: str, exc: Exception) -> str:
    """Why no connection was made, and to where: urllib3's reason after its connection's repr
    (the OS error: refused, unresolvable name, timed out). Headers, so keys, are never in it."""
    u = parse_url(url)
    reason = str(exc).split(": ", 1)[-1]
    return (f"could not connect to {u.scheme}://{u.host}:{u.port or (443 if u.scheme == 'https' else 80)} "
            f"({reason}); check the destination's base_url and that the service is reachable from here")


@dataclass
class SendResult:
    outcome: Decision  # RETRY when attempts ran out
    status: int | None
    body: str
    attempts: int
    retries_by_cause: dict[str, int] = field(default_factory=dict)
    possible_duplicates: int = 0  # retries after a connection error, when the body may have landed
    waited_s: float = 0.0
    throttled_s: float = 0.0  # time spent waiting for the client's own rate limiter


def send(
    pool: urllib3.PoolManager,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: DeliveryPolicy,
    success: frozenset[int],
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    before_attempt: Callable[[], float] | None = None,
) -> SendResult:
    """POST one body until it is accepted, rejected for good, or attempts run out.

    `before_attempt` runs before every attempt, retries included (a rate limiter's `acquire`,
    returning the seconds it waited).
    """
    res = SendResult(outcome=RETRY, status=None, body="", attempts=0)
    for attempt in range(policy.max_attempts):
        res.attempts = attempt + 1
        cause: str
        wait: float | None = None
        if before_attempt is not None:
            res.throttled_s += before_attempt()
        try:
            resp = pool.request("POST", url, body=body, headers=dict(headers), timeout=policy.timeout_s,
                                retries=False, redirect=False)
        except (NewConnectionError, ConnectTimeoutError) as exc:  # nothing was sent
            cause = "timeout" if type(exc) is ConnectTimeoutError else "connection"
            res.status, res.body = None, f"{cause} error: {_not_connected(url, exc)}"
        except ValueError as exc:
            # A malformed URL or header: no request left. Only the type is kept, since the
            # library's message may quote a header value, the key included.
            res.status, res.body = None, f"request not sent: {type(exc).__name__} (check the destination's base_url and key)"
            res.outcome = STOP
            return res
        except HTTPError as exc:  # reset, or no answer in time, after the body went out
            cause = "timeout" if isinstance(exc, ReadTimeoutError) else "connection"
            res.status, res.body = None, f"{cause} error: {type(exc).__name__}"
            res.possible_duplicates += 1
        else:
            # keys first, then the cut: a key echoed across the cut leaves no first characters
            answer = scrub(resp.data[:ANSWER_READ].decode("utf-8", "replace"))
            res.status, res.body = resp.status, answer[:ANSWER_CHARS]
            verdict = decide(resp.status, success)
            if verdict != RETRY:
                res.outcome = verdict
                return res
            cause = str(resp.status)
            if resp.status in (429, 503):
                after = parse_retry_after(resp.headers.get("Retry-After"))
                if after is not None:
                    wait = min(after, policy.retry_after_cap_s)
        if attempt + 1 >= policy.max_attempts or should_stop():
            break
        res.retries_by_cause[cause] = res.retries_by_cause.get(cause, 0) + 1
        if wait is None:
            rng = rng or random.Random()  # made on the first backoff: seeding one per request showed in profiles
            wait = backoff(attempt, policy.backoff_base_s, policy.backoff_cap_s, rng)
        res.waited_s += wait
        sleep(wait)
    res.outcome = RETRY
    return res
