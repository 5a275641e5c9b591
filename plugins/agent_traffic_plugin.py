"""Airflow UI: the latest AI-traffic report and the data-quality results, in the Browse menu.

A small FastAPI app, mounted by the API server at /agent-traffic, serves pages read from the
staging store (built by `agent_traffic.team.report`); `external_views` shows them inside the Airflow UI.
Only users who may read the runs of the nightly DAG see them. The staging store is the one of the
config named by AGENT_TRAFFIC_CONFIG, with the object-store credentials of its Connections, as
for the DAGs (`agent_traffic_airflow.staging_store`).

Every Airflow component imports plugins (scheduler, workers, triggerer), but only the API server
serves these pages: the app is built on its first request, so the others import nothing more
than this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from fastapi import FastAPI

    from agent_traffic.ingest.storage import Store

DAG_ID = "agent_traffic_nightly"
URL_PREFIX = "/agent-traffic"
#: Third-party HTML (GX's data docs, anything under files/) runs in a sandbox: no script, an opaque origin
SANDBOXED_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
                 "form-action 'none'; frame-ancestors 'self'; sandbox")


def security_headers(path: str) -> dict[str, str]:
    """Headers on every answer: our pages may run only the report's own script (by hash) and
    load nothing from the network; files served as stored run sandboxed; nothing is sniffed."""
    from agent_traffic.team.report import PAGE_CSP

    files = "/files/" in path
    return {
        "Content-Security-Policy": SANDBOXED_CSP if files else f"{PAGE_CSP}; frame-ancestors 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def served_prefixes() -> tuple[str, ...]:
    """What /files/ serves: reports and quality results, never events, the ledger or anything else."""
    from agent_traffic import layout

    return layout.reports_prefix(), layout.quality_prefix()


def build_app() -> FastAPI:
    """The pages; every route needs a user who may read the nightly DAG's runs."""
    import mimetypes
    from datetime import date

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    from agent_traffic import layout
    from agent_traffic.errors import AgentTrafficError
    from agent_traffic.team import report as pages
    from agent_traffic_airflow import staging_store

    def store() -> Store:
        try:
            return staging_store()
        except AgentTrafficError as exc:
            raise HTTPException(503, f"{exc} (set AGENT_TRAFFIC_CONFIG for the API server)") from None

    app = FastAPI(title="agent-traffic", dependencies=[
        Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))])

    @app.middleware("http")
    async def secure(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.update(security_headers(request.url.path))
        return response

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return pages.index_page(store())

    @app.get("/report/latest", response_class=HTMLResponse)
    def latest_report() -> HTMLResponse:
        s = store()
        days = pages.report_days(s)
        if not days:
            return HTMLResponse(pages.no_report_page(s), status_code=404)
        return HTMLResponse(s.get_bytes(layout.report_key(days[0])))

    @app.get("/report/{day}", response_class=HTMLResponse)
    def report(day: str) -> HTMLResponse:
        try:
            day = date.fromisoformat(day).isoformat()
        except ValueError:
            raise HTTPException(404, f"not a date: {day!r} (expected YYYY-MM-DD)") from None
        try:
            return HTMLResponse(store().get_bytes(layout.report_key(day)))
        except FileNotFoundError:
            raise HTTPException(404, f"no report for {day}") from None

    @app.get("/quality", response_class=HTMLResponse)
    def quality(day: str | None = None) -> str:
        if day is not None:
            try:
                day = date.fromisoformat(day).isoformat()
            except ValueError:
                raise HTTPException(400, "day must be a date, YYYY-MM-DD") from None
        return pages.quality_page(store(), day)

    @app.get("/files/{key:path}")
    def files(key: str) -> Response:
        """Result files (GX JSON, data docs) and reports, exactly as stored."""
        if not key.startswith(served_prefixes()) or ".." in key.split("/"):
            raise HTTPException(404, "not found")
        try:
            data = store().get_bytes(key)
        except FileNotFoundError:
            raise HTTPException(404, "not found") from None
        return Response(data, media_type=mimetypes.guess_type(key)[0] or "application/octet-stream")

    return app


class LazyApp:
    """An ASGI app that builds the FastAPI app on its first request (in the API server only)."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.app is None:
            self.app = build_app()
        await self.app(scope, receive, send)


class AgentTrafficPlugin(AirflowPlugin):
    name = "agent_traffic"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "agent-traffic pages"}]
    external_views = [
        {"name": "AI traffic report", "href": f"{URL_PREFIX}/report/latest", "url_route": "agent-traffic-report",
         "destination": "nav", "category": "browse"},
        {"name": "AI traffic data quality", "href": f"{URL_PREFIX}/quality",
         "url_route": "agent-traffic-quality", "destination": "nav", "category": "browse"},
        {"name": "AI traffic: all reports", "href": f"{URL_PREFIX}/", "url_route": "agent-traffic",
         "destination": "nav", "category": "browse"},
    ]
