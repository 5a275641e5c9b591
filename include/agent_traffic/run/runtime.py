"""What every task of a run needs, built from the config file path: the config, the staging
store, and, built at first use, the log formats, the annotator and the validation suites.

Its own module, importing only the config and the store, so a delivery task loads neither the
parser, the classifier nor DuckDB (about 0.05 s of CPU per task).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from agent_traffic import layout
from agent_traffic.config import Config, load_config
from agent_traffic.ingest.storage import Store, StoreOptions

if TYPE_CHECKING:
    from agent_traffic.annotate.annotator import Annotator
    from agent_traffic.formats import LogFormat
    from agent_traffic.staging.validate import Validator


@dataclass
class Runtime:
    """Everything a task needs, built from the config file path (cheap, per task)."""

    cfg: Config
    options: StoreOptions
    run_id: str
    config_path: str | None = None  # named in the commands the summary tells the user to run

    @cached_property
    def store(self) -> Store:
        return Store(self.cfg.staging, self.options)

    @cached_property
    def formats(self) -> dict[str, LogFormat]:
        from agent_traffic.formats import load_formats

        return load_formats(self.cfg.formats)

    @cached_property
    def annotator(self) -> Annotator:
        """Classifier, IP verifier (newest range snapshots) and enrichment, built once per task."""
        from agent_traffic.annotate.annotator import Annotator
        from agent_traffic.annotate.ranges import range_store

        return Annotator.build(self.cfg.catalog_files, range_store=range_store(self.cfg, self.options),
                               max_age_days=self.cfg.ip_ranges.max_age_days)

    @cached_property
    def validator(self) -> Validator:
        """The Great Expectations suites, built once per task (a backfill validates day by day)."""
        from agent_traffic.staging.validate import (
            Validator,  # GX is slow to import: only where it runs
        )

        return Validator(self.cfg)

    @classmethod
    def load(cls, config_path: str, run_id: str, options: StoreOptions | None = None) -> Runtime:
        cfg = load_config(config_path)
        return cls(cfg, options or StoreOptions.from_config(cfg.object_store), run_id, config_path)


def outbox_store(rt: Runtime) -> Store:
    """Where a dry run writes its request bodies when no outbox is named: beside the staging."""
    return Store(rt.store.url(layout.OUTBOX), rt.options)
