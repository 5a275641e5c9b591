"""The HTML report: one self-contained file of charts and numbers over a date range of staging.

Everything is inline (CSS, the data as JSON, a small script that draws the charts as SVG), and a
Content-Security-Policy forbids any network fetch, so the file opens the same from a laptop, an S3
console or the Airflow UI. Every chart also carries its numbers: as data attributes on each SVG
mark and as a table under it, so the numbers can be read (and tested) without the drawing.

The data comes only from `agent_traffic.team.query` views: the report and the data team's queries
agree by construction. The nightly DAG writes one report per day to `_reports/date=<D>/report.html`.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import orjson

from agent_traffic import layout
from agent_traffic.ingest.storage import Store
from agent_traffic.pages import CSS, page
from agent_traffic.redact import redact_url
from agent_traffic.team.query import connect

TOP = 15  # rows in the "top" charts
REPORT_TABLES = ("events", "quarantine", "manifests", "deliveries", "dead_letters", "quality",
                 "quality_findings")
OUTCOME_COLORS = {"delivered": "#2e8540", "failed": "#d62728", "pending": "#f0a202", "held": "#8c564b",
                  "too old": "#9467bd"}
VERIFICATION_SERIES = [("verified", "#2e8540"), ("spoofed", "#d62728"), ("unverifiable", "#8c9bab"),
                       ("not recorded", "#d9dde3")]


@dataclass
class Chart:
    """One chart: labels (categories) and one or more series of numbers over them."""

    id: str
    title: str
    kind: str  # columns (stacked, labels on x) | bars (horizontal, stacked) | grouped-bars
    label_title: str
    labels: list[str]
    series: list[dict[str, Any]]  # {"name", "values": [per label], "color"?}
    unit: str
    note: str = ""
    empty: str = "Nothing in this date range."
    extra: dict[str, list[str]] = field(default_factory=dict)  # text columns for the table


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    rel = con.sql(sql)
    if rel is None:
        return []
    cols = rel.columns
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def _num(x: Any) -> int | float:
    if x is None:
        return 0
    f = float(x)
    return int(f) if f.is_integer() else round(f, 2)


def _pivot(rows: list[dict[str, Any]], label: str, series: str, value: str,
           order: list[str] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Long rows -> labels in first-seen order and one series per distinct `series` value."""
    labels: list[str] = []
    names: dict[str, int] = {}
    for r in rows:
        if str(r[label]) not in labels:
            labels.append(str(r[label]))
        names[str(r[series])] = names.get(str(r[series]), 0) + _num(r[value])
    ordered = order or sorted(names, key=lambda n: (-names[n], n))
    grid = {n: [0] * len(labels) for n in ordered}
    for r in rows:
        if str(r[series]) in grid:
            grid[str(r[series])][labels.index(str(r[label]))] = _num(r[value])
    return labels, [{"name": n, "values": grid[n]} for n in ordered if n in names]


def per_day_chart(con: duckdb.DuckDBPyConnection, column: str, title: str, chart_id: str) -> Chart:
    rows = _rows(con, f"""
        SELECT strftime(date, '%Y-%m-%d') AS day, COALESCE({column}, 'unknown') AS s, count(*) AS n
        FROM events WHERE is_ai GROUP BY ALL ORDER BY day, s""")
    labels, series = _pivot(rows, "day", "s", "n")
    return Chart(chart_id, title, "columns", "day (UTC)", labels, series, "requests",
                 note="Requests by AI agents (the catalog's is_ai), per UTC day.")


def report_charts(con: duckdb.DuckDBPyConnection) -> list[Chart]:
    """Every chart of the report, computed with the staging views (dates already limited)."""
    charts = [
        per_day_chart(con, "provider", "AI requests per provider per day", "ai-by-provider"),
        per_day_chart(con, "purpose", "AI requests per purpose per day", "ai-by-purpose"),
    ]

    rows = _rows(con, f"""
        SELECT agent, any_value(provider) AS provider, any_value(purpose) AS purpose, count(*) AS n
        FROM events WHERE is_ai GROUP BY agent ORDER BY n DESC, agent LIMIT {TOP}""")
    charts.append(Chart(
        "top-agents", "Top AI agents", "bars", "agent", [r["agent"] for r in rows],
        [{"name": "requests", "values": [_num(r["n"]) for r in rows]}], "requests",
        note=f"The {TOP} AI agents with the most requests.",
        extra={"provider": [r["provider"] for r in rows], "purpose": [r["purpose"] for r in rows]}))

    rows = _rows(con, f"""
        SELECT path, count(*) AS n, count(DISTINCT agent) AS agents
        FROM events WHERE is_ai GROUP BY path ORDER BY n DESC, path LIMIT {TOP}""")
    charts.append(Chart(
        "top-paths", "Top paths fetched by AI agents", "bars", "path", [r["path"] for r in rows],
        [{"name": "requests", "values": [_num(r["n"]) for r in rows]}], "requests",
        note="Paths without the query string.", extra={"agents": [str(r["agents"]) for r in rows]}))

    site_urls = _rows(con, """SELECT count(DISTINCT host || path) AS n FROM events
                              WHERE status BETWEEN 200 AND 299""")[0]["n"]
    rows = _rows(con, f"""
        SELECT agent, count(DISTINCT host || path) AS urls FROM events
        WHERE is_ai AND status BETWEEN 200 AND 299 GROUP BY agent ORDER BY urls DESC, agent LIMIT {TOP}""")
    charts.append(Chart(
        "coverage", "Coverage: distinct URLs fetched per AI agent (2xx)", "bars", "agent",
        [r["agent"] for r in rows], [{"name": "distinct URLs", "values": [_num(r["urls"]) for r in rows]}],
        "URLs",
        note=f"A URL is host + path (query string ignored), counted when the answer was 2xx. "
             f"All visitors together fetched {site_urls:,} distinct URLs with a 2xx answer.",
        extra={"% of site URLs": [f"{100 * r['urls'] / site_urls:.1f}" if site_urls else "" for r in rows]}))

    rows = _rows(con, f"""
        SELECT agent, path, count(*) FILTER (status BETWEEN 400 AND 499) AS e4,
               count(*) FILTER (status >= 500) AS e5
        FROM events WHERE is_ai AND status >= 400 GROUP BY agent, path
        ORDER BY e4 + e5 DESC, agent, path LIMIT {TOP}""")
    charts.append(Chart(
        "errors", "Error hotspots: 4xx and 5xx answers to AI agents, by agent and path", "bars",
        "agent · path", [f"{r['agent']} · {r['path']}" for r in rows],
        [{"name": "4xx", "values": [_num(r["e4"]) for r in rows], "color": "#f0a202"},
         {"name": "5xx", "values": [_num(r["e5"]) for r in rows], "color": "#d62728"}], "errors",
        note="The agent and path pairs with the most error answers.", empty="No 4xx or 5xx answers to AI agents."))

    rows = _rows(con, f"""
        SELECT agent, count(duration_ms) AS n, quantile_cont(duration_ms, 0.5) AS p50,
               quantile_cont(duration_ms, 0.95) AS p95
        FROM events WHERE is_ai AND duration_ms IS NOT NULL GROUP BY agent
        ORDER BY n DESC, agent LIMIT {TOP}""")
    charts.append(Chart(
        "response-times", "Response times per AI agent (p50 and p95)", "grouped-bars", "agent",
        [r["agent"] for r in rows],
        [{"name": "p50", "values": [_num(r["p50"]) for r in rows], "color": "#4c78a8"},
         {"name": "p95", "values": [_num(r["p95"]) for r in rows], "color": "#9ecae9"}], "ms",
        note="Milliseconds, over the requests whose log format records a duration.",
        empty="No response times: these logs' format has no duration field (combined and common "
              "logs do not; Scrunch CSV and JSON formats with a request time do).",
        extra={"timed requests": [f"{r['n']:,}" for r in rows]}))

    rows = _rows(con, f"""
        WITH top AS (SELECT agent, count(*) AS total FROM events WHERE is_ai GROUP BY agent
                     ORDER BY total DESC, agent LIMIT {TOP})
        SELECT e.agent, COALESCE(e.verification, 'not recorded') AS v, count(*) AS n, any_value(top.total) AS t
        FROM events e JOIN top USING (agent) WHERE e.is_ai GROUP BY ALL ORDER BY t DESC, e.agent, v""")
    labels, series = _pivot(rows, "agent", "v", "n", order=[n for n, _ in VERIFICATION_SERIES])
    colors = dict(VERIFICATION_SERIES)
    for s in series:
        s["color"] = colors[s["name"]]
    if not any(r["v"] != "not recorded" for r in rows):
        labels, series = [], []
    charts.append(Chart(
        "verification", "Verified vs spoofed AI agents", "bars", "agent", labels, series, "requests",
        note="verified: the IP is in the operator's published ranges; spoofed: outside a complete "
             "list; unverifiable: no list or no IP; not recorded: staged before verification existed.",
        empty="No verification recorded for these events (staged before verification existed)."))

    rows = _rows(con, f"""
        SELECT referred_by, count(*) AS n FROM events WHERE referred_by IS NOT NULL
        GROUP BY referred_by ORDER BY n DESC, referred_by LIMIT {TOP}""")
    charts.append(Chart(
        "referred", "Visits referred by AI assistants", "bars", "assistant (provider)",
        [r["referred_by"] for r in rows], [{"name": "visits", "values": [_num(r["n"]) for r in rows]}],
        "visits", note="Requests whose referrer is an AI assistant (chatgpt.com, perplexity.ai, …).",
        empty="No visits referred by AI assistants recorded in this range (events staged before "
              "referrals were recorded have none)."))

    rows = _rows(con, """
        SELECT destination || ' (' || site || ')' AS d,
               CASE outcome WHEN 'not_selected' THEN 'not sent: ' || reason
                            WHEN 'not_eligible' THEN 'not eligible: ' || reason
                            WHEN 'too_old' THEN 'too old' ELSE outcome END AS o,
               CAST(sum(events) AS BIGINT) AS n
        FROM deliveries GROUP BY ALL ORDER BY d, o""")
    fixed = ["delivered", "failed", "pending", "held", "too old"]
    others = sorted({r["o"] for r in rows} - set(fixed))
    labels, series = _pivot(rows, "d", "o", "n", order=fixed + others)
    greys = iter(["#c7ccd3", "#a9b1bb", "#dde1e6", "#8f99a5", "#e8ebee"])
    for s in series:  # not sent, not eligible: neutral greys, they are no failure
        s["color"] = OUTCOME_COLORS.get(s["name"]) or next(greys, "#c7ccd3")
    charts.append(Chart(
        "deliveries", "Delivery outcomes per destination", "bars", "destination (site)", labels, series,
        "events", note="Every staged event of these dates, per destination: delivered (acknowledged), "
                       "failed (dead letter), pending (not yet acknowledged), held (its partition failed "
                       "the data-quality checks), too old for the vendor, "
                       "or not sent and why.",
        empty="No delivery plans for these dates."))
    return charts


def health(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The run's health at a glance: volumes, losses, quality, delivery problems."""
    ev = _rows(con, """SELECT count(*) AS requests, count(*) FILTER (is_ai) AS ai,
                              count(DISTINCT agent) FILTER (is_ai) AS ai_agents,
                              string_agg(DISTINCT site, ', ' ORDER BY site) AS sites FROM events""")[0]
    mf = _rows(con, """SELECT count(*) AS objects, count(*) FILTER (status <> 'staged') AS failed,
                              CAST(COALESCE(sum(lines_read), 0) AS BIGINT) AS lines_read FROM manifests""")[0]
    quarantined = _rows(con, "SELECT count(*) AS n FROM quarantine")[0]["n"]
    dl = _rows(con, """SELECT outcome, CAST(sum(events) AS BIGINT) AS n FROM deliveries GROUP BY outcome""")
    outcomes = {r["outcome"]: r["n"] for r in dl}
    q = _rows(con, """SELECT count(*) AS partitions, count(*) FILTER (status = 'fail') AS failed
                      FROM quality""")[0]
    problems = [f"object {redact_url(r['url'])} failed: {r['reason']}" for r in _rows(
        con, "SELECT url, reason FROM manifests WHERE status <> 'staged' ORDER BY url")]
    problems += [
        f"{r['destination']}: {r['events']:,} event(s) in {r['chunks']} chunk(s) failed "
        f"({'HTTP ' + str(r['http_status']) if r['http_status'] else 'no answer'}): {(r['answer'] or '')[:200]}"
        for r in _rows(con, """SELECT destination, http_status, CAST(sum(events) AS BIGINT) AS events,
                                      count(*) AS chunks, any_value(vendor_answer) AS answer
                               FROM dead_letters GROUP BY ALL ORDER BY ALL""")]
    problems += [f"{r['destination']}: {r['n']:,} event(s) pending" for r in _rows(
        con, """SELECT destination, CAST(sum(events) AS BIGINT) AS n FROM deliveries
                WHERE outcome = 'pending' GROUP BY ALL ORDER BY ALL""")]
    problems += [f"{r['destination']}: {r['n']:,} event(s) held by failed data-quality checks" for r in _rows(
        con, """SELECT destination, CAST(sum(events) AS BIGINT) AS n FROM deliveries
                WHERE outcome = 'held' GROUP BY ALL ORDER BY ALL""")]
    problems += [f"quality {r['date']} {r['site']}: delivery held: {'; '.join(r['failures'])}" for r in _rows(
        con, "SELECT date, site, failures FROM quality WHERE status = 'fail' ORDER BY date, site")]
    return {
        "metrics": [
            ("requests", "requests", ev["requests"]),
            ("ai", "AI requests", ev["ai"]),
            ("ai-share", "AI share %", round(100 * ev["ai"] / ev["requests"], 1) if ev["requests"] else 0),
            ("ai-agents", "AI agents seen", ev["ai_agents"]),
            ("lines-read", "lines read", mf["lines_read"]),
            ("quarantined", "lines quarantined", quarantined),
            ("objects", "objects staged", mf["objects"] - mf["failed"]),
            ("objects-failed", "objects failed", mf["failed"]),
            ("delivered", "events delivered", outcomes.get("delivered", 0)),
            ("failed", "events failed", outcomes.get("failed", 0)),
            ("pending", "events pending", outcomes.get("pending", 0)),
            ("held", "events held", outcomes.get("held", 0)),
            ("quality-failed", "partitions failing quality", q["failed"]),
        ],
        "sites": ev["sites"] or "",
        "quality_partitions": q["partitions"],
        "quarantine": _rows(con, """SELECT reason, count(*) AS n FROM quarantine
                                    GROUP BY reason ORDER BY n DESC, reason"""),
        "quality": _rows(con, """SELECT strftime(date, '%Y-%m-%d') AS date, site, status,
                                        list_concat(failures, warnings) AS messages
                                 FROM quality ORDER BY date, site"""),
        "problems": problems,
    }


def build_report(store: Store, first: date | str, last: date | str | None = None) -> str:
    """The report's HTML for the UTC dates first..last (inclusive)."""
    first = first.isoformat() if isinstance(first, date) else first
    last = (last.isoformat() if isinstance(last, date) else last) or first
    con = connect(store, first, last, tables=REPORT_TABLES)
    try:
        return render(first, last, health(con), report_charts(con), staging=redact_url(store.root_url))
    finally:
        con.close()


def write_daily_report(store: Store, day: date | str) -> str:
    """Write the report of one day to the staging store; returns its key."""
    day = day.isoformat() if isinstance(day, date) else day
    key = layout.report_key(day)
    store.put_bytes(key, build_report(store, day, day).encode("utf-8"))
    return key


def report_days(store: Store) -> list[str]:
    """Dates that have a report in the store, newest first."""
    return sorted((d for k in store.list(layout.reports_prefix()) if (d := layout.parse_report_key(k))),
                  reverse=True)


# ---------------------------------------------------------------------------------------------
# HTML


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    return _e(v)


def _table(c: Chart) -> str:
    stacked = c.kind != "grouped-bars" and len(c.series) > 1
    head = [c.label_title, *c.extra, *(s["name"] for s in c.series)] + (["total"] if stacked else [])
    out = ["<table class='numbers'><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, label in enumerate(c.labels):
        out.append(f"<tr data-label='{_e(label)}'><th scope='row'>{_e(label)}</th>")
        out += [f"<td>{_e(col[i])}</td>" for col in c.extra.values()]
        for s in c.series:
            v = s["values"][i]
            out.append(f"<td class='n' data-series='{_e(s['name'])}' data-value='{v}'>{_fmt(v)}</td>")
        if stacked:
            t = _num(sum(s["values"][i] for s in c.series))
            out.append(f"<td class='n' data-series='total' data-value='{t}'>{_fmt(t)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figure(c: Chart) -> str:
    body = (f"<div class='plot' aria-hidden='true'></div><details open><summary>numbers ({_e(c.unit)})"
            f"</summary>{_table(c)}</details>") if c.labels else f"<p class='empty'>{_e(c.empty)}</p>"
    return (f"<figure class='chart' id='chart-{_e(c.id)}' data-chart='{_e(c.id)}' data-kind='{_e(c.kind)}'>"
            f"<h2>{_e(c.title)}</h2><p class='note'>{_e(c.note)}</p>{body}</figure>")


def _health_html(h: dict[str, Any]) -> str:
    tiles = "".join(
        f"<div class='tile' data-metric='{_e(k)}' data-value='{v}'><b>{_fmt(v)}</b><span>{_e(label)}</span></div>"
        for k, label, v in h["metrics"])
    problems = ("<ul class='problems'>" + "".join(f"<li>{_e(p)}</li>" for p in h["problems"]) + "</ul>"
                if h["problems"] else "<p class='ok'>No problems: every object staged, nothing failed or "
                                      "pending, no partition failed its quality checks.</p>")
    q = "".join(f"<tr data-reason='{_e(r['reason'])}'><td>{_e(r['reason'])}</td><td class='n'>{_fmt(r['n'])}</td></tr>"
                for r in h["quarantine"])
    quarantine = (f"<table class='numbers' id='quarantine'><thead><tr><th>quarantine reason</th><th>lines</th>"
                  f"</tr></thead><tbody>{q}</tbody></table>") if q else "<p>No line was quarantined.</p>"
    qs = "".join(
        f"<tr data-site='{_e(r['site'])}' data-status='{_e(r['status'])}'><td>{_e(r['date'])}</td>"
        f"<td>{_e(r['site'])}</td><td>{_e(r['status'])}</td><td>{_e('; '.join(r['messages']))}</td></tr>"
        for r in h["quality"])
    quality = (f"<table class='numbers' id='quality'><thead><tr><th>date</th><th>site</th><th>quality</th>"
               f"<th>failures and warnings</th></tr></thead><tbody>{qs}</tbody></table>"
               if qs else "<p>No data-quality results were recorded for these dates.</p>")
    return (f"<section id='health'><h2>Health</h2><div class='tiles'>{tiles}</div>{problems}"
            f"<div class='cols'><div>{quarantine}</div><div>{quality}</div></div></section>")


def _json_script(obj: Any) -> str:
    # `<` escaped so no string in the data can close the script element.
    return orjson.dumps(obj).decode().replace("<", "\\u003c")


def render(first: str, last: str, h: dict[str, Any], charts: list[Chart], *, staging: str) -> str:
    span = first if first == last else f"{first} to {last}"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    data = {"first": first, "last": last, "charts": [asdict(c) for c in charts]}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{PAGE_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AI agent traffic · {_e(span)}</title>
<style>{CSS}</style></head>
<body data-first="{_e(first)}" data-last="{_e(last)}">
<header><h1>AI agent traffic · {_e(span)}</h1>
<p>Sites: {_e(h['sites'] or 'none staged')} · staging {_e(staging)} · generated {now} · UTC days</p></header>
{_health_html(h)}
<main>{''.join(_figure(c) for c in charts)}</main>
<script type="application/json" id="report-data">{_json_script(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""



# Draws each figure's chart from the embedded JSON; marks it data-rendered=ok|error|empty.
SCRIPT = r"""
(function () {
  'use strict';
  var NS = 'http://www.w3.org/2000/svg';
  var PALETTE = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#b279a2', '#eeca3b',
                 '#9d755d', '#ff9da6', '#bab0ac', '#1f77b4', '#8c564b'];
  var data = JSON.parse(document.getElementById('report-data').textContent);
  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) { return (Math.round(v * 100) / 100).toLocaleString('en-US'); }
  function short(t, n) { return t.length > n ? t.slice(0, n - 1) + '\u2026' : t; }
  function color(s, i) { return s.color || PALETTE[i % PALETTE.length]; }
  function mark(parent, c, label, s, v, attrs) {
    attrs['data-label'] = label; attrs['data-series'] = s.name; attrs['data-value'] = v;
    var r = el('rect', attrs, parent);
    el('title', {}, r, label + ' \u00b7 ' + s.name + ': ' + fmt(v) + ' ' + c.unit);
  }
  function legendLayout(c, x0, maxX) {
    var items = [], x = x0, y = 14;
    if (c.series.length < 2) return {items: items, height: 0};
    c.series.forEach(function (s, j) {
      var wItem = 24 + 6.5 * s.name.length;
      if (x + wItem > maxX && x > x0) { x = x0; y += 16; }
      items.push({s: s, j: j, x: x, y: y});
      x += wItem;
    });
    return {items: items, height: y + 8};
  }
  function legend(svg, lg) {
    lg.items.forEach(function (it) {
      var g = el('g', {'class': 'legend', 'data-series': it.s.name}, svg);
      el('rect', {x: it.x, y: it.y - 9, width: 10, height: 10, fill: color(it.s, it.j)}, g);
      el('text', {x: it.x + 14, y: it.y}, g, it.s.name);
    });
  }
  function svgRoot(c, w, h) {
    return el('svg', {viewBox: '0 0 ' + w + ' ' + h, width: w, height: h, role: 'img',
                      'aria-label': c.title, 'data-chart': c.id});
  }
  function bars(c) {
    var grouped = c.kind === 'grouped-bars';
    var band = grouped ? 12 * c.series.length + 8 : 22;
    var labelW = 260, plotW = 560, w = labelW + plotW + 110;
    var lg = legendLayout(c, labelW, w - 10), top = lg.height + 4, h = top + c.labels.length * band + 4;
    var totals = c.labels.map(function (_, i) {
      return c.series.reduce(function (a, s) { return a + (s.values[i] || 0); }, 0);
    });
    var all = grouped ? [].concat.apply([], c.series.map(function (s) { return s.values; })) : totals;
    var max = Math.max.apply(null, all.concat([0]));
    var svg = svgRoot(c, w, h);
    svg.setAttribute('data-max', max);
    legend(svg, lg);
    c.labels.forEach(function (label, i) {
      var y = top + i * band;
      var g = el('g', {'class': 'row', 'data-label': label}, svg);
      el('text', {x: labelW - 8, y: y + band / 2 + 4, 'text-anchor': 'end'}, g, short(label, 42));
      var x = labelW;
      c.series.forEach(function (s, j) {
        var v = s.values[i] || 0;
        if (!v) return;
        var bw = max > 0 ? v / max * plotW : 0;
        if (grouped) {
          mark(g, c, label, s, v, {x: labelW, y: y + 4 + j * 12, width: bw.toFixed(2), height: 10, fill: color(s, j)});
          el('text', {x: labelW + bw + 4, y: y + 13 + j * 12}, g, fmt(v));
        } else {
          mark(g, c, label, s, v, {x: x.toFixed(2), y: y + 3, width: bw.toFixed(2), height: band - 6, fill: color(s, j)});
          x += bw;
        }
      });
      if (!grouped) el('text', {x: x + 4, y: y + band / 2 + 4, 'class': 'total'}, g, fmt(totals[i]));
    });
    return svg;
  }
  function columns(c) {
    var n = c.labels.length, left = 56, plotH = 200, colW = Math.max(14, Math.min(48, 640 / n));
    var rotate = n > 12, bottom = rotate ? 56 : 24;
    var w = Math.max(520, left + n * (colW + 6) + 20);
    var lg = legendLayout(c, left, w - 10), top = lg.height + 18, h = top + plotH + bottom;
    var totals = c.labels.map(function (_, i) {
      return c.series.reduce(function (a, s) { return a + (s.values[i] || 0); }, 0);
    });
    var max = Math.max.apply(null, totals.concat([0]));
    var svg = svgRoot(c, w, h);
    svg.setAttribute('data-max', max);
    legend(svg, lg);
    [0, 0.5, 1].forEach(function (f) {
      var y = top + plotH - f * plotH;
      el('line', {x1: left, x2: w - 10, y1: y, y2: y, stroke: '#e1e6eb'}, svg);
      el('text', {x: left - 6, y: y + 4, 'text-anchor': 'end'}, svg, fmt(Math.round(max * f)));
    });
    c.labels.forEach(function (label, i) {
      var x = left + 6 + i * (colW + 6), y = top + plotH;
      var g = el('g', {'class': 'col', 'data-label': label}, svg);
      c.series.forEach(function (s, j) {
        var v = s.values[i] || 0;
        if (!v) return;
        var bh = max > 0 ? v / max * plotH : 0;
        y -= bh;
        mark(g, c, label, s, v, {x: x, y: y.toFixed(2), width: colW, height: bh.toFixed(2), fill: color(s, j)});
      });
      el('text', {x: x + colW / 2, y: y - 4, 'text-anchor': 'middle', 'class': 'total'}, g, fmt(totals[i]));
      var lx = x + colW / 2, ly = top + plotH + 14;
      el('text', rotate ? {x: lx, y: ly, 'text-anchor': 'end', transform: 'rotate(-45 ' + lx + ' ' + ly + ')'}
                        : {x: lx, y: ly, 'text-anchor': 'middle'}, g, label.slice(5));
    });
    return svg;
  }
  var byId = {};
  data.charts.forEach(function (c) { byId[c.id] = c; });
  Array.prototype.forEach.call(document.querySelectorAll('figure[data-chart]'), function (fig) {
    var c = byId[fig.getAttribute('data-chart')], plot = fig.querySelector('.plot');
    if (!c || !plot || !c.labels.length) { fig.setAttribute('data-rendered', 'empty'); return; }
    try {
      plot.appendChild(c.kind === 'columns' ? columns(c) : bars(c));
      fig.setAttribute('data-rendered', 'ok');
    } catch (e) {
      fig.setAttribute('data-rendered', 'error');
      plot.textContent = 'This chart could not be drawn (' + e.message + '); its numbers are in the table below.';
    }
  });
  document.body.setAttribute('data-charts', 'done');
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: The only script a published page may run: the report's own, by its hash (no 'unsafe-inline',
#: so a script that log content smuggled into the page would not run)
SCRIPT_HASH = _sha256(SCRIPT)
#: What the pages we publish may do: draw with inline styles, run the report's script, nothing else
PAGE_CSP = (f"default-src 'none'; style-src 'unsafe-inline'; script-src {SCRIPT_HASH}; img-src data:; "
            "base-uri 'none'; form-action 'none'")



# ---------------------------------------------------------------------------------------------
# Pages for the Airflow UI plugin: the list of reports, and the data-quality results of a date


def quality_days(store: Store) -> list[str]:
    """Dates with validation results under `_quality/`, newest first."""
    try:
        entries = store.fs.ls(store.path(layout.QUALITY), detail=True)
    except FileNotFoundError:
        return []
    names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    return sorted((d for n in names if (d := layout.day_of(n))), reverse=True)


def index_page(store: Store, base: str = "") -> str:
    """Every report and every date with quality results, linked under `base`."""
    reports = "".join(f"<li><a href='{base}report/{d}'>{d}</a></li>" for d in report_days(store))
    quality = "".join(f"<li><a href='{base}quality?day={d}'>{d}</a></li>" for d in quality_days(store))
    body = (f"<div class='cols'><section><h2>Daily reports</h2><ul id='reports'>{reports or '<li>none yet</li>'}"
            f"</ul></section><section><h2>Data quality</h2><ul id='quality-days'>"
            f"{quality or '<li>none yet</li>'}</ul></section></div>"
            f"<p class='note'>Staging: {_e(redact_url(store.root_url))}</p>")
    return page("AI agent traffic: reports and data quality", body)


def no_report_page(store: Store) -> str:
    return page("No report yet", (
        f"<p>No report was found under {_e(store.url(layout.reports_prefix()))}.</p><p>The nightly DAG writes one "
        "per day (task <code>write_report</code>); to make one now: <code>agent-traffic report "
        "--config CONFIG --from YYYY-MM-DD</code>.</p>"))


def quality_page(store: Store, day: str | None = None, files_base: str = "files/") -> str:
    """One date's validation results: each suite, its failed expectations, and the GX files."""
    days = quality_days(store)
    day = day or (days[0] if days else None)
    if day is None:
        return page("No data-quality results yet", (
            f"<p>Nothing under {_e(store.url(layout.quality_prefix()))}: the nightly DAG's validation writes "
            "its results there, per date.</p>"))
    con = connect(store, day, day, tables=("quality", "quality_findings"))
    try:
        verdicts = _rows(con, "SELECT site, status, run_id, failures, warnings FROM quality ORDER BY site")
        failed = _rows(con, """SELECT suite, expectation, "column", severity, unexpected, checked, scope
                               FROM quality_findings WHERE success IS NOT TRUE
                                 AND (run_id IN (SELECT run_id FROM quality) OR NOT EXISTS (FROM quality))
                               ORDER BY suite, expectation, "column", scope""")
    finally:
        con.close()
    rows = "".join(
        f"<tr data-site='{_e(v['site'])}' data-status='{_e(v['status'])}'><td>{_e(v['site'])}</td>"
        f"<td>{_e(v['status'])}</td><td>{_e(v['run_id'])}</td>"
        f"<td>{_e('; '.join(v['failures'] + v['warnings']))}</td></tr>" for v in verdicts)
    frows = "".join(
        f"<tr><td>{_e(f['suite'])}</td><td>{_e(f['expectation'])}</td><td>{_e(f['column'])}</td>"
        f"<td>{_e(f['severity'])}</td><td class='n'>{_fmt(f['unexpected'])}</td>"
        f"<td class='n'>{_fmt(f['checked'])}</td><td>{_e(f['scope'])}</td></tr>" for f in failed)
    keys = store.list(layout.quality_prefix(day))
    docs = [k for k in keys if layout.is_docs_index(k)]
    files = "".join(f"<li><a href='{files_base}{_e(k)}'>{_e(label)}</a></li>" for k, label in
                    [(k, "GX data docs") for k in docs]
                    + [(k, k.removeprefix(layout.quality_prefix(day))) for k in keys if k.endswith(".json")])
    other = " ".join(f"<a href='?day={d}'>{d}</a>" for d in days if d != day)
    body = (
        f"<table class='numbers' id='verdicts'><thead><tr><th>site</th><th>quality</th><th>run</th>"
        f"<th>failures and warnings</th></tr></thead><tbody>{rows}</tbody></table>"
        + (f"<h2>Expectations not met</h2><table class='numbers' id='failed'><thead><tr><th>suite</th>"
           f"<th>expectation</th><th>column</th><th>severity</th><th>unexpected rows</th><th>rows checked</th>"
           f"<th>scope</th></tr></thead><tbody>{frows}</tbody></table>" if frows
           else "<p class='ok'>Every expectation was met.</p>")
        + f"<h2>Results and data docs</h2><ul>{files}</ul>"
        + (f"<p class='note'>Other dates: {other}</p>" if other else ""))
    return page(f"Data quality · {day}", body)
