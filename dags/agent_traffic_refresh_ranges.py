"""
### agent_traffic_refresh_ranges

Fetches the IP-range lists that AI and search operators publish (OpenAI, Anthropic, Google,
Bing, Perplexity, Apple, Common Crawl, DuckDuckGo: the `ip_ranges` of the agent catalog) and
keeps one dated snapshot per list and day in the staging store
(`_ranges/<list-id>/<YYYY-MM-DD>.json`, or `ip_ranges.store` in the config). The nightly run
verifies each request that claims an agent against the newest snapshot of that agent's lists.

* **Schedule**: daily at 23:00 UTC, an hour before `agent_traffic_nightly`.
* **Failures**: a list that cannot be fetched, or whose body is not a range file, keeps its
  previous snapshot (or the copy shipped with the package); the task fails only when every
  fetch failed, which usually means no network or a wrong proxy.
* **Config**: `AGENT_TRAFFIC_CONFIG`, as for the nightly DAG; `ip_ranges.urls` points a list at
  a mirror or (null) stops fetching it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from agent_traffic_airflow import IP_RANGES, config_path, store_options


@dag(
    dag_id="agent_traffic_refresh_ranges",
    schedule="0 23 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "owner": "agent-traffic"},
    tags=["agent-traffic"],
    doc_md=__doc__,
)
def agent_traffic_refresh_ranges():
    @task(outlets=[IP_RANGES], execution_timeout=timedelta(minutes=30))
    def refresh() -> dict:
        """Fetch every list; store the valid ones as today's snapshots; report each list."""
        from agent_traffic.annotate.catalog import load_catalog
        from agent_traffic.annotate.ranges import range_store
        from agent_traffic.annotate.ranges import refresh as refresh_ranges
        from agent_traffic.config import load_config

        cfg = load_config(config_path())
        options = store_options(cfg)
        report = refresh_ranges(load_catalog(cfg.catalog_files), range_store(cfg, options),
                                urls=cfg.ip_ranges.urls, timeout_s=cfg.ip_ranges.timeout_s,
                                keep=cfg.ip_ranges.keep)
        print(report.render())
        if report.failed and not report.updated:
            raise RuntimeError(f"no IP-range list could be fetched ({report.failed} failed); "
                               "check the network or proxy, or `ip_ranges.urls` in the config")
        return report.as_dict()

    refresh()


agent_traffic_refresh_ranges()
