"""The staging layout: every key and prefix under the staging root is spelled here and nowhere else.

Everything lives under the config's `staging` root (a folder, `s3://`, `gs://` or `az://`), so any
Airflow worker can run any task. Readers and writers build keys with these functions and read them
back with the parsers below, so a prefix changes in one place; `tests/test_layout.py` fails when
another module spells one. The delivery ledger (`_delivery/`) is the one subtree kept elsewhere:
its keys and records belong to the ledger. Writers of each prefix are named on the right.

```
events/site=<site>/provider=<provider>/date=<D>/part-<object_id>.parquet       stage.py
        one file per object version and partition; <D> (YYYY-MM-DD) = the UTC day of ts
quarantine/date=<D>/part-<object_id>.parquet          lines that did not parse, with the reason (stage.py)
quarantine/date=<D>/part-<object_id>-quality.parquet  rows a row-level expectation removed (validate.py)
_manifests/date=<D>/<object_id>.json     one object version: url, size, ETag, format and why, status,
                                         stats, files, lines carried from the version before (steps.py)
_holds/date=<D>/source=<source>.json     a source's objects held by data quality, and releases (holds.py)
_delivery/<destination>/...              the delivery ledger: plans, packs, acks, dead letters, too-old
                                         marks, leases (keys: ledger.py; tree: docs/data.md)
_runs/<run_id>.json                      each run's summary (runner.py, the DAG)
_runs/discovery/<run_id>.json            each run's object list: key, size, ETag, mtime
_quality/date=<D>/<run_id>.json          a run's validation findings (validate.py)
_quality/date=<D>/site=<site>/status.json   the partition's verdict (pass, warn, fail)
_quality/date=<D>/docs/index.html        Great Expectations data docs
_reports/date=<D>/report.html            the day's HTML report (nightly DAG, task write_report)
_ranges/<list>/<D>.json                  dated snapshots of the operators' IP ranges (ranges.py;
                                         `ip_ranges.store` puts them elsewhere)
_outbox/<run_id>/<destination>/<D>/<chunk_id>.json|.ndjson   `run --dry-run`: the exact request
        bodies, each with its <chunk_id>.request.json (method, URL, events; no auth); nothing sent
```

Every write is a whole-object put of a finished file (a temporary name, then a rename on local
disk; a single upload on object stores, visible only once complete), so a killed task never
leaves a half file that a later run trusts. An object's manifest record is written last and is
its commit marker.
"""

from __future__ import annotations

import re

EVENTS = "events"
QUARANTINE = "quarantine"
MANIFESTS = "_manifests"
HOLDS = "_holds"
RUNS = "_runs"
QUALITY = "_quality"
REPORTS = "_reports"
RANGES = "_ranges"
OUTBOX = "_outbox"

_DAY = r"\d{4}-\d{2}-\d{2}"
_DAY_IN_KEY = re.compile(rf"date=({_DAY})")
_STATUS_KEY = re.compile(rf"^{QUALITY}/date=({_DAY})/site=([^/]+)/status\.json$")
_REPORT_KEY = re.compile(rf"^{REPORTS}/date=({_DAY})/report\.html$")
_RUN_KEY = re.compile(rf"^{RUNS}/([^/]+)\.json$")


def _dated(root: str, day: str | None) -> str:
    """`<root>/` or, with a day, `<root>/date=<D>/`: the prefix of a date-partitioned tree."""
    return f"{root}/" if day is None else f"{root}/date={day}/"


def day_of(key: str) -> str | None:
    """The day (YYYY-MM-DD) of a key or folder name with a `date=<D>` segment, else None."""
    m = _DAY_IN_KEY.search(key)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Parquet datasets: events and quarantine


def event_key(site: str, provider: str, day: str, object_id: str) -> str:
    return f"{events_prefix(site)}provider={provider}/date={day}/part-{object_id}.parquet"


def events_prefix(site: str | None = None) -> str:
    """All events files, or one site's."""
    return f"{EVENTS}/" if site is None else f"{EVENTS}/site={site}/"


def is_event_key(key: str) -> bool:
    return key.startswith(f"{EVENTS}/")


def event_site(key: str) -> str:
    """The site of an events key, by position (called per batch of rows, so no regex)."""
    return key.split("/")[1].removeprefix("site=")


def quarantine_key(day: str, object_id: str) -> str:
    """Lines of an object that did not parse."""
    return f"{_dated(QUARANTINE, day)}part-{object_id}.parquet"


def quality_quarantine_key(day: str, object_id: str) -> str:
    """Rows of an object that a row-level expectation removed from its events files."""
    return f"{_dated(QUARANTINE, day)}part-{object_id}-quality.parquet"


def dataset_prefix(dataset: str) -> str:
    """Every file of a Parquet dataset (EVENTS or QUARANTINE)."""
    return f"{dataset}/"


def parquet_glob(dataset: str, day: str | None = None) -> str:
    """A glob over a Parquet dataset's files (EVENTS or QUARANTINE), or over one day's."""
    if day is None:
        return f"{dataset}/**/*.parquet"
    depth = "*/*/" if dataset == EVENTS else ""  # events/site=/provider=/date=/; quarantine/date=/
    return f"{dataset}/{depth}date={day}/*.parquet"


# ---------------------------------------------------------------------------------------------
# JSON records: manifests, holds, runs


def manifest_key(day: str, object_id: str) -> str:
    return f"{manifests_prefix(day)}{object_id}.json"


def manifests_prefix(day: str | None = None) -> str:
    return _dated(MANIFESTS, day)


def hold_key(day: str, source: str) -> str:
    return f"{holds_prefix(day)}source={source}.json"


def holds_prefix(day: str) -> str:
    return _dated(HOLDS, day)


def run_key(run_id: str) -> str:
    """A run's summary."""
    return f"{runs_prefix()}{run_id}.json"


def discovery_key(run_id: str) -> str:
    """A run's discovery record: the objects it listed."""
    return f"{runs_prefix()}discovery/{run_id}.json"


def runs_prefix() -> str:
    return f"{RUNS}/"


def parse_run_key(key: str) -> str | None:
    """The run id of a summary key; None for a discovery record or any other key."""
    m = _RUN_KEY.match(key)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Validation results, data docs and reports


def quality_key(day: str, run_id: str) -> str:
    """A run's validation findings for one date."""
    return f"{quality_prefix(day)}{run_id}.json"


def quality_status_key(day: str, site: str) -> str:
    """The verdict on one partition (site and date): pass, warn or fail."""
    return f"{quality_prefix(day)}site={site}/status.json"


def parse_quality_status_key(key: str) -> tuple[str, str] | None:
    """(day, site) of a verdict key; None for any other key."""
    m = _STATUS_KEY.match(key)
    return (m.group(1), m.group(2)) if m else None


def quality_prefix(day: str | None = None) -> str:
    return _dated(QUALITY, day)


def docs_prefix(day: str) -> str:
    """Great Expectations' data docs of a date."""
    return f"{quality_prefix(day)}docs/"


def docs_index_key(day: str) -> str:
    return f"{docs_prefix(day)}index.html"


def is_docs_index(key: str) -> bool:
    return key.startswith(f"{QUALITY}/") and key.endswith("/docs/index.html")


def report_key(day: str) -> str:
    """The daily HTML report."""
    return f"{_dated(REPORTS, day)}report.html"


def reports_prefix() -> str:
    return f"{REPORTS}/"


def parse_report_key(key: str) -> str | None:
    """The day of a report key; None for any other key."""
    m = _REPORT_KEY.match(key)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Roots of their own: IP-range snapshots and the dry-run outbox


def ranges_root(staging: str) -> str:
    """The default home of the IP-range snapshots: a folder of the staging root."""
    return f"{staging.rstrip('/')}/{RANGES}"


def outbox_run_dir(run_id: str) -> str:
    """One dry run's request bodies, under the outbox root (`_outbox` or `run --outbox`)."""
    return run_id


def outbox_key(run_id: str, destination: str, day: str, name: str) -> str:
    """A request body (or its description) written by a dry run, under the outbox root."""
    return f"{outbox_run_dir(run_id)}/{destination}/{day}/{name}"
