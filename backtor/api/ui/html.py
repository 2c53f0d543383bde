"""The pieces every /ui page shares: escaping, times and ages, links, the page shell.

Every value that comes from a user or the database goes through `esc` (text and
attributes) or `url_part` (a path segment or query value, then `esc`). No script: the
pages are HTML, inline SVG and a little inline CSS.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime, tzinfo
from urllib.parse import quote, urlencode

from starlette.responses import HTMLResponse

from backtor import __version__


def esc(value: object) -> str:
    """Text or an attribute value, escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def url_part(value: object) -> str:
    """One path segment, percent-encoded (no `/` left), for a URL that is then escaped."""
    return quote(str(value), safe="")


def query(params: Mapping[str, str | int | None]) -> str:
    """`?a=1&b=2` from the parameters that are set; empty when none is."""
    kept = {key: str(value) for key, value in params.items() if value is not None}
    return f"?{urlencode(kept)}" if kept else ""


def spec_url(name: str, params: Mapping[str, str | int | None] | None = None) -> str:
    return f"/ui/spec/{url_part(name)}{query(params or {})}"


def workflow_url(conductor_ui_url: str | None, workflow_id: str | None) -> str | None:
    """`{CONDUCTOR_UI_URL}/execution/{workflowId}`, or None without either."""
    if not conductor_ui_url or not workflow_id:
        return None
    return f"{conductor_ui_url}/execution/{url_part(workflow_id)}"


def workflow_link(conductor_ui_url: str | None, workflow_id: str | None, text: str) -> str:
    """A link to the workflow in Conductor's UI; the bare id when no UI is configured."""
    if not workflow_id:
        return ""
    url = workflow_url(conductor_ui_url, workflow_id)
    label = f"{esc(text)} <code>{esc(_short(workflow_id))}</code>"
    if url is None:
        return f'<span class="wf" title="{esc(workflow_id)}">{label}</span>'
    return (
        f'<a class="wf conductor-link" data-kind="{esc(text)}" href="{esc(url)}" rel="noreferrer" '
        f'title="{esc(workflow_id)} in Conductor">{label}</a>'
    )


def _short(workflow_id: str) -> str:
    return workflow_id if len(workflow_id) <= 13 else f"{workflow_id[:8]}…"


# -- times ----------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A length of time in its two largest units: `45 s`, `3 min`, `2 h 5 min`, `3 d 4 h`."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    if days < 365:
        return f"{days} d {hours} h" if hours and days < 14 else f"{days} d"
    years, days = divmod(days, 365)
    return f"{years} y {days} d" if days else f"{years} y"


def relative(moment: datetime, now: datetime) -> str:
    """`3 min ago`, `in 40 s`, or `now`."""
    seconds = (moment - now).total_seconds()
    if abs(seconds) < 1:
        return "now"
    return f"in {duration(seconds)}" if seconds > 0 else f"{duration(seconds)} ago"


def stamp(moment: datetime, zone: tzinfo) -> str:
    """`2026-05-01 14:03:07 CEST`: the wall clock of `zone`, with its abbreviation."""
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or local.strftime('%z')}"


def time_tag(moment: datetime, zone: tzinfo, now: datetime) -> str:
    """A <time> with the wall clock, and how long ago (or until) it is."""
    return (
        f'<time datetime="{esc(moment.isoformat())}">{esc(stamp(moment, zone))}</time>'
        f' <span class="rel">({esc(relative(moment, now))})</span>'
    )


# -- the page -------------------------------------------------------------------------------

# No script anywhere: the policy allows inline styles and same-site forms, nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --bg: #f5f7fa; --card: #fff;
  --keep: #2e7d32; --remove: #d84315; --fail: #c62828; --pin: #1565c0; --run: #0277bd;
  --expire: #a05a00; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif;
  color: var(--ink); background: var(--bg); }
header.top { background: #243b53; color: #fff; padding: 10px 24px; display: flex;
  align-items: center; gap: 16px; }
header.top a { color: #fff; text-decoration: none; }
header.top .brand { font-weight: bold; font-size: 17px; letter-spacing: .3px; }
header.top .crumbs { color: #bcccdc; }
header.top .crumbs a { color: #d9e2ec; }
header.top form { margin-left: auto; }
header.top button { background: transparent; color: #d9e2ec; border: 1px solid #829ab1;
  border-radius: 4px; padding: 3px 10px; cursor: pointer; }
main { padding: 18px 24px 32px; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 14px 16px; margin-bottom: 16px; }
.muted, .rel { color: var(--muted); }
.rel { font-size: 12px; }
code { font: 12px "DejaVu Sans Mono", monospace; background: #eef2f7; padding: 1px 4px;
  border-radius: 3px; }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .4px; color: var(--muted);
  background: #f0f4f8; }
tbody tr:hover { background: #f8fafc; }
a { color: #1769aa; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: bold; white-space: nowrap; }
.state-enabled { background: #e3f4e4; color: #1b5e20; }
.state-disabled { background: #eceff1; color: #455a64; }
.state-waiting, .state-ended { background: #fff4e0; color: #8a5a00; }
.state-purging { background: #fde7e7; color: #a61b1b; }
.running { background: #e1f2fb; color: #01579b; }
.overdue { color: var(--fail); font-weight: bold; }
.overdue-why { font-weight: normal; }
.overdue .badge { background: var(--fail); color: #fff; }
.fresh { color: var(--keep); }
.due { color: #b45f06; }
.skip-reason { background: #fff4e0; color: #8a5a00; }
.chips span { display: inline-block; margin: 0 6px 2px 0; font-size: 12px; }
.decision-keep { background: #e3f4e4; color: #1b5e20; }
.decision-remove { background: #fde9e1; color: #bf360c; }
.decision-ignore { background: #eceff1; color: #455a64; }
.decision-expiring { background: #ffefc7; color: var(--expire); }
tr.status-expiring td:first-child { border-left: 3px solid #f0b429; }
.expires { font-size: 12px; color: var(--expire); white-space: nowrap; }
.paused-reason { display: inline-block; max-width: 34em; font-size: 12px; color: #334e68;
  overflow-wrap: anywhere; }
.pinned-flag { background: #e3edfb; color: var(--pin); }
.failure-text { color: var(--fail); }
.verify-verified, .restore-completed { background: #e3f4e4; color: #1b5e20; }
.verify-failed, .restore-failed, .restore-timed_out { background: #fde7e7; color: #a61b1b; }
.verify-never, .restore-terminated { background: #eceff1; color: #455a64; }
.verify-details { font-size: 12px; overflow-wrap: anywhere; }
tr.failure td:first-child { border-left: 3px solid var(--fail); }
.summary span { margin-right: 18px; }
.pager { margin: 10px 0; display: flex; gap: 14px; align-items: center; flex-wrap: wrap; }
.pager a, .pager strong { white-space: nowrap; }
.timeline-wrap { overflow-x: auto; }
svg.timeline { width: 100%; min-width: 900px; height: auto; display: block; }
svg.timeline text { font: 12px "DejaVu Sans", sans-serif; fill: var(--ink); }
svg.timeline .row-label.off text, svg.timeline text.off { fill: #9aa5b1; }
svg.timeline .band { fill: #f8fafc; }
svg.timeline .band.alt { fill: #fff; }
svg.timeline .grid { stroke: #e4e9f0; }
svg.timeline .axis { stroke: #9aa5b1; }
svg.timeline text.tick { font-size: 11px; fill: var(--muted); }
.tl .mark circle { fill: #cfd8dc; }
.tl .mark.keep circle { fill: var(--keep); }
.tl .mark.remove circle { fill: #fff; stroke: var(--remove); stroke-width: 2.2; }
.tl .mark.status-removing circle { fill: #fff; stroke: #9aa5b1; stroke-width: 2;
  stroke-dasharray: 2 2; }
.tl .mark.status-removed circle { fill: #cfd8dc; }
.tl .mark.status-running circle { fill: #fff; stroke: var(--run); stroke-width: 2; }
.tl .mark.status-expiring circle { fill: #ffd978; stroke: var(--expire); stroke-width: 1.6;
  stroke-dasharray: none; }
.tl .mark.status-expiring path.hourglass { fill: var(--expire); }
.tl .mark.failure path.cross { stroke: var(--fail); stroke-width: 2.6; }
.tl .mark.status-remove_failed circle { fill: #fff; stroke: var(--fail);
  stroke-width: 2.4; }
.tl .mark.status-remove_failed path.cross { stroke: var(--fail); stroke-width: 1.8; }
.tl .mark circle.pin-ring, .tl .mark.pinned circle.pin-ring { fill: none; stroke: var(--pin);
  stroke-width: 2.2; stroke-dasharray: none; }
.tl .tier-mark.kept { fill: var(--keep); }
.tl .tier-mark.represents { fill: #fff; stroke: #9aa5b1; stroke-width: 1.6; }
.tl .tier-mark.pinned { fill: var(--pin); }
.tl a:hover circle, .tl a:hover rect { stroke: #102a43; stroke-width: 2; }
.legend { display: flex; flex-wrap: wrap; gap: 16px; font-size: 12px; color: var(--muted);
  margin-top: 6px; }
.legend svg { vertical-align: middle; margin-right: 4px; width: 16px; height: 16px; }
form.login { max-width: 420px; }
.card.narrow { max-width: 640px; }
td.next-fire, table.backups td:nth-child(2), .stamp { white-space: nowrap; }
form.login label { display: block; font-weight: bold; margin-bottom: 6px; }
form.login input[type=password] { width: 100%; padding: 8px; font-size: 15px;
  border: 1px solid #9aa5b1; border-radius: 4px; }
form.login button { margin-top: 12px; padding: 7px 18px; font-size: 14px; background: #243b53;
  color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
.error { color: var(--fail); font-weight: bold; }
footer { color: var(--muted); font-size: 12px; padding: 0 24px 24px; }
"""


def page(
    title: str,
    body: str,
    *,
    crumbs: str = "",
    sign_out: bool = False,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A whole page: the shell, the top bar (crumbs, and Sign out after a form login)."""
    logout = (
        '<form method="post" action="/ui/logout"><button type="submit">Sign out</button></form>'
        if sign_out
        else ""
    )
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · Backtor</title><style>{CSS}</style></head><body>"
        f'<header class="top"><a class="brand" href="/ui">Backtor</a>'
        f'<span class="crumbs">{crumbs}</span>{logout}</header>'
        f"<main>{body}</main>"
        f"<footer>Backtor {esc(__version__)} · read-only view · the REST API is "
        f'described at <a href="/docs">/docs</a></footer>'
        "</body></html>"
    )
    return HTMLResponse(
        document, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})}
    )


def message_page(
    status_code: int, title: str, text: str, *, sign_out: bool = False
) -> HTMLResponse:
    """An error page: what went wrong, and the way back."""
    body = (
        f'<div class="card"><h1>{esc(title)}</h1><p class="error">{esc(text)}</p>'
        '<p><a href="/ui">Back to every spec</a></p></div>'
    )
    return page(title, body, status_code=status_code, sign_out=sign_out)
