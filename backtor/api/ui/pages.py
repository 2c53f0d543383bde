"""The two pages: every spec with its state, and one spec's backups as its retention plan.

Reads go through backtor.db.repository (a page of specs, a page of backups, limited in SQL)
and backtor.api.ui.queries (a figure per listed spec); the plan is the one GET
/backup/{name}/retention shows. Everything shown is escaped (backtor.api.ui.html).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from backtor.api.ui import freshness, queries
from backtor.api.ui.freshness import Freshness
from backtor.api.ui.html import (
    duration,
    esc,
    query,
    relative,
    spec_url,
    stamp,
    workflow_link,
    workflow_url,
)
from backtor.api.ui.timeline import (
    FAILURE_STATUSES,
    Axis,
    Mark,
    Row,
    choose_axis,
    legend,
    render,
)
from backtor.core.policy import FIELD_BY_TIER, Tier
from backtor.core.retention import NEWEST, PINNED, Decision, RetentionPlan
from backtor.db import repository
from backtor.db.models import Backup, BackupSpec, BackupStatus, SkipReason
from backtor.scheduling.recording import CANDIDATE_STATUSES, policy_of

SPECS_PER_PAGE = 100
BACKUPS_PER_PAGE = 200
MAX_BACKUPS_PER_PAGE = 1000
ERROR_CHARS = 300  # of a failure's message, in the table
PAUSED_REASON_CHARS = 160  # of a paused spec's reason, on the overview (its page shows all)
EXPIRING = BackupStatus.EXPIRING.value

SKIP_MEANING = {
    SkipReason.RUNNING.value: "the previous backup was still running",
    SkipReason.MISFIRE.value: "passed over while the scheduler was late or down",
    SkipReason.CONDUCTOR_UNAVAILABLE.value: "Conductor could not be reached",
    SkipReason.INVALID_SCHEDULE.value: "the stored schedule can no longer be evaluated",
}
STATUS_MEANING = {
    "RUNNING": "backup under way",
    "COMPLETED": "held",
    EXPIRING: "held until its removal delay ends, unless pinned or kept again",
    "FAILED": "the backup failed: no data",
    "TIMED_OUT": "the backup timed out: no data",
    "REMOVING": "removal under way",
    "REMOVED": "removed",
    "REMOVE_FAILED": "removal keeps failing; still retried",
}
VERIFY_MEANING = {
    "VERIFIED": "its latest verification read it whole and found it restorable",
    "FAILED": "its latest verification failed: it may not restore",
    "NEVER": "never verified",
}
OPEN_RUN = ("STARTING", "RUNNING")  # a restore or verification under way (holds off removal)
VERIFY_DETAILS_CHARS = 120  # of a failed verification's details, in the table (hover: all)
# The order counts are listed in; REMOVED last, as history.
STATUS_ORDER = (
    "RUNNING",
    "COMPLETED",
    EXPIRING,
    "REMOVING",
    "REMOVE_FAILED",
    "FAILED",
    "TIMED_OUT",
    "REMOVED",
)


@dataclass(frozen=True)
class View:
    """What a page needs besides the database: the time, Conductor's UI, the session."""

    now: datetime
    conductor_ui_url: str | None


# -- the state of a spec -----------------------------------------------------------------------


def state_of(spec: BackupSpec, now: datetime) -> tuple[str, str]:
    """(css word, text) for the spec's state."""
    if spec.deleting:
        return "purging", "purging"
    if not spec.enabled:
        return "disabled", "disabled (paused)"
    if spec.from_date is not None and spec.from_date > now:
        return "waiting", "enabled, starts later"
    if spec.to_date is not None and spec.to_date <= now:
        return "ended", "enabled, window ended"
    return "enabled", "enabled"


def paused_reason(spec: BackupSpec, clip: int | None = None) -> str:
    """A paused spec's pausedReason (set by PUT, or by autoPauseAfterFailures): its text,
    cut to `clip` characters when one is given (the whole text in its tooltip)."""
    reason = spec.paused_reason
    if spec.enabled or spec.deleting or not reason:
        return ""
    shown = reason if clip is None or len(reason) <= clip else reason[: clip - 1] + "\u2026"
    return (
        f'<br><span class="paused-reason" title="{esc(reason)}">'
        f'<span class="rel">why:</span> <q>{esc(shown)}</q></span>'
    )


def _state_cell(spec: BackupSpec, view: View, reason_chars: int | None = None) -> str:
    word, text = state_of(spec, view.now)
    cell = f'<span class="badge state-{word}">{esc(text)}</span>'
    cell += paused_reason(spec, reason_chars)
    if spec.from_date is not None and spec.from_date > view.now:
        cell += f'<br><span class="rel">from {esc(stamp(spec.from_date, UTC))}</span>'
    if spec.to_date is not None:
        ending = "ended" if spec.to_date <= view.now else "until"
        cell += f'<br><span class="rel">{ending} {esc(stamp(spec.to_date, UTC))}</span>'
    if spec.running_create_workflow_id:
        link = workflow_link(view.conductor_ui_url, spec.running_create_workflow_id, "running")
        cell += f'<br><span class="badge running">{link}</span>'
    return cell


def _schedule_cell(spec: BackupSpec) -> str:
    derived = ' <span class="rel">from the retention policy</span>' if spec.cron_derived else ""
    zone = f'<span class="rel">{esc(spec.timezone)}</span>'
    return f"<code>{esc(spec.cron_string)}</code>{derived}<br>{zone}"


def _last_success_cell(fresh: Freshness, view: View) -> str:
    """The age of the last success; red with a badge when overdue (the alert's rule)."""
    why = ""
    if fresh.limit_seconds is not None and fresh.period_seconds is not None:
        why = (
            f"expected within {duration(fresh.limit_seconds)} (1.5 \u00d7 the schedule's longest "
            f"wait, {duration(fresh.period_seconds)}, at least 5 min)"
        )
    css = "last-success overdue" if fresh.overdue else "last-success"
    if fresh.last_success is None:
        text = '<span class="age">never</span>'
    else:
        age = relative(fresh.last_success, view.now)
        fresh_class = "" if fresh.overdue else ' class="fresh"' if fresh.active else ""
        text = (
            f'<span class="age"{fresh_class}>{esc(age)}</span><br>'
            f'<span class="rel stamp">{esc(stamp(fresh.last_success, UTC))}</span>'
        )
    if fresh.overdue:
        assert fresh.since is not None
        late = f"no success for {duration((view.now - fresh.since).total_seconds())}; {why}"
        text = f'<span class="badge" title="{esc(late)}">overdue</span> ' + text
        text += f'<br><span class="rel overdue-why">{esc(late)}</span>'
    return f'<td class="{css}" title="{esc(why)}">{text}</td>'


def _next_fire_cell(spec: BackupSpec, view: View) -> str:
    if spec.next_fire_at is None:
        why = "disabled" if not spec.enabled or spec.deleting else "no more fires in its window"
        return f'<td class="next-fire"><span class="muted">— ({esc(why)})</span></td>'
    moment = spec.next_fire_at
    if moment <= view.now:
        return (
            f'<td class="next-fire due">due {esc(relative(moment, view.now))}<br>'
            f'<span class="rel">{esc(stamp(moment, UTC))}</span></td>'
        )
    return (
        f'<td class="next-fire">{esc(relative(moment, view.now))}<br>'
        f'<span class="rel">{esc(stamp(moment, UTC))}</span></td>'
    )


def _skip_cell(spec: BackupSpec, view: View) -> str:
    if spec.last_skip_at is None:
        return '<td class="last-skip"><span class="muted">none</span></td>'
    reason = spec.last_skip_reason or "unknown"
    meaning = SKIP_MEANING.get(reason, "")
    return (
        f'<td class="last-skip">{esc(relative(spec.last_skip_at, view.now))} '
        f'<span class="badge skip-reason" title="{esc(meaning)}">{esc(reason)}</span><br>'
        f'<span class="rel">{esc(meaning)}</span></td>'
    )


def _counts(counts: Mapping[str, int]) -> str:
    known = [s for s in STATUS_ORDER if counts.get(s)]
    others = sorted(s for s in counts if s not in STATUS_ORDER and counts[s])
    chips = []
    for status in [*known, *others]:
        css = (
            "failure-text" if status in FAILURE_STATUSES else "muted" if status == "REMOVED" else ""
        )
        chips.append(
            f'<span class="{css}" title="{esc(STATUS_MEANING.get(status, status))}">'
            f"{esc(status)} {counts[status]}</span>"
        )
    return (
        '<div class="chips">' + ("".join(chips) or '<span class="muted">none yet</span>') + "</div>"
    )


# -- the overview --------------------------------------------------------------------------------


def overview(session: Session, view: View, after: str | None) -> str:
    """Every spec (a page of SPECS_PER_PAGE, by name) with its state."""
    specs = repository.list_specs(session, after=after, limit=SPECS_PER_PAGE + 1)
    more = len(specs) > SPECS_PER_PAGE
    specs = specs[:SPECS_PER_PAGE]
    ids = [spec.id for spec in specs]
    successes = queries.newest_successes(session, ids)
    counts = queries.status_counts(session, ids)
    until = freshness.deadline()
    rows = []
    overdue = 0
    for spec in specs:
        fresh = freshness.judge(spec, successes.get(spec.id), view.now, until)
        overdue += fresh.overdue
        word, _ = state_of(spec, view.now)
        rows.append(
            f'<tr class="spec-row" data-spec="{esc(spec.name)}" data-state="{word}" '
            f'data-overdue="{"true" if fresh.overdue else "false"}">'
            f'<td><a class="spec-link" href="{esc(spec_url(spec.name))}">{esc(spec.name)}</a></td>'
            f"<td>{_state_cell(spec, view, PAUSED_REASON_CHARS)}</td>"
            f"<td>{_schedule_cell(spec)}</td>"
            f"{_last_success_cell(fresh, view)}{_next_fire_cell(spec, view)}"
            f"{_skip_cell(spec, view)}<td>{_counts(counts.get(spec.id, {}))}</td></tr>"
        )
    pager = ""
    if after is not None:
        pager += '<a href="/ui">« first specs</a>'
    if more:
        following = esc(query({"after": specs[-1].name}))
        pager += f'<a class="next-page" href="/ui{following}">next specs »</a>'
    table = (
        '<table class="specs"><thead><tr><th>Spec</th><th>State</th><th>Schedule</th>'
        "<th>Last success</th><th>Next fire</th><th>Last skip</th><th>Backups</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No backup spec yet: <code>POST /backup</code> creates one.</p>'
    )
    alarm = f' · <span class="overdue">{overdue} overdue</span>' if overdue else ""
    return (
        '<h1>Backup specs</h1><p class="muted">'
        f"{len(specs)} spec(s){' on this page' if more or after else ''}{alarm} · "
        f"now {esc(stamp(view.now, UTC))} · overdue: no success for 1.5 &times; the schedule's "
        "longest wait (at least 5 min), the rule of the BacktorBackupMissing alert</p>"
        f'<div class="pager">{pager}</div>{table}'
        f'<div class="pager">{pager}</div>'
    )


# -- one spec --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecQuery:
    """The spec page's parameters, checked."""

    after: int | None
    limit: int
    removed: bool | None  # show REMOVED backups too; None: when the whole history fits a page
    axis: Axis | None

    def params(self, **changes: str | int | None) -> dict[str, str | int | None]:
        """The query of this page with `changes`: for the pager's and toggles' links."""
        values: dict[str, str | int | None] = {
            "limit": None if self.limit == BACKUPS_PER_PAGE else self.limit,
            "removed": None if self.removed is None else "1" if self.removed else "0",
            "axis": self.axis,
            "after": self.after,
        }
        values.update(changes)
        return values


def _decision(plan: RetentionPlan, backup: Backup) -> Decision | None:
    """The plan's word on a candidate (COMPLETED or EXPIRING, as GET .../retention plans
    them); None for the other statuses."""
    return plan.by_id.get(str(backup.id)) if backup.status in CANDIDATE_STATUSES else None


def expires_at(backup: Backup) -> datetime | None:
    """When an EXPIRING backup's removal starts; None in every other status."""
    return backup.expires_at if backup.status == EXPIRING else None


def _mark(backup: Backup, decision: Decision | None, zone: ZoneInfo, view: View) -> Mark:
    action = decision.action if decision else "ignore"
    reasons = tuple(decision.reasons) if decision else ()
    tags = tuple(tier.value for tier in decision.tags) if decision else ()
    expiry = expires_at(backup)
    if backup.status == EXPIRING and action == "keep":
        verdict = f"keep: {', '.join(reasons)}; back to COMPLETED at the next retention run"
    elif backup.status == EXPIRING:
        when = f"removal starts {stamp(expiry, zone)}" if expiry else "removal delayed"
        verdict = f"expiring: {when}, unless pinned or kept again"
    elif action == "keep":
        verdict = f"keep: {', '.join(reasons)}"
    elif action == "remove":
        verdict = "to be removed by the plan"
    else:
        verdict = STATUS_MEANING.get(backup.status, backup.status)
    title = f"#{backup.id} · {stamp(backup.scheduled_at, zone)} · {backup.status} · {verdict}"
    if tags and action == "remove":
        title += f" (represents {', '.join(tags)}, beyond N)"
    if backup.status in FAILURE_STATUSES and backup.last_error:
        title += f" · {backup.last_error[:ERROR_CHARS]}"
    href = workflow_url(view.conductor_ui_url, backup.create_workflow_id) or f"#backup-{backup.id}"
    return Mark(
        backup.id,
        backup.scheduled_at,
        backup.status,
        action,
        tags,
        reasons,
        backup.pinned,
        href,
        title,
        expiry,
    )


def _rows(
    plan_reasons: Sequence[str], fields: Mapping[str, str], counts: Mapping[Tier, int]
) -> list[Row]:
    rows = [
        Row(tier.value, tier.value, fields.get(FIELD_BY_TIER[tier], ""), counts[tier] > 0)
        for tier in Tier
    ]
    rows.append(Row(NEWEST, NEWEST, "always kept", True))
    tiers = {tier.value for tier in Tier}
    for reason in plan_reasons:  # reasons the policy adds (keep-within, keep-last, ...)
        if reason not in tiers and reason not in (NEWEST, PINNED):
            rows.append(Row(reason, reason, "policy", True))
    rows.append(Row(PINNED, PINNED, "outside the policy", True))
    return rows


def _unit(spec: BackupSpec, fresh: Freshness, view: View, backups: Sequence[Backup]) -> float:
    """The log axis's unit: the schedule's period, else the usual gap between backups."""
    period = fresh.period_seconds or freshness.expected_period(spec, view.now, freshness.deadline())
    if period:
        return period
    times = sorted(b.scheduled_at.timestamp() for b in backups)
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return statistics.median(gaps) if gaps else 60.0


def megabytes(size: float) -> str:
    """`0.021 MB`, `96.0 MB`, `20,480 MB`."""
    if size < 1:
        return f"{size:.3f} MB"
    if size < 1000:
        return f"{size:.1f} MB"
    return f"{size:,.0f} MB"


def _backup_row(backup: Backup, decision: Decision | None, zone: ZoneInfo, view: View) -> str:
    action = decision.action if decision else "ignore"
    failure = backup.status in FAILURE_STATUSES
    classes = f"backup-row {action} status-{backup.status.lower()}" + (
        " failure" if failure else ""
    )
    pinned = ' <span class="badge pinned-flag">pinned</span>' if backup.pinned else ""
    expiry = expires_at(backup)
    if action == "keep":
        plan = '<span class="badge decision-keep">keep</span>'
    elif backup.status == EXPIRING:  # marked by a retention run: its removal waits
        plan = '<span class="badge decision-expiring">expiring</span>'
    elif action == "remove":
        plan = '<span class="badge decision-remove">remove</span>'
    else:
        plan = '<span class="badge decision-ignore">—</span>'
    reasons = ", ".join(decision.reasons) if decision else ""
    tags = ", ".join(t.value for t in decision.tags) if decision else ""
    why = esc(reasons) if reasons else '<span class="muted">—</span>'
    if tags and action == "remove":
        why += f'<br><span class="rel">represents {esc(tags)}, beyond N</span>'
    status = f'<span class="{"failure-text" if failure else ""}">{esc(backup.status)}</span>'
    status += f'<br><span class="rel">{esc(STATUS_MEANING.get(backup.status, ""))}</span>'
    if expiry is not None:
        status += (
            '<br><span class="expires">removal starts <time class="expires-at" '
            f'datetime="{esc(expiry.isoformat())}">{esc(stamp(expiry, zone))}</time> '
            f'<span class="rel">({esc(relative(expiry, view.now))})</span></span>'
        )
    if failure and backup.last_error:
        error = esc(backup.last_error[:ERROR_CHARS])
        status += f'<br><span class="failure-text error-text">{error}</span>'
    if backup.remove_attempts and backup.status in ("REMOVING", "REMOVE_FAILED"):
        status += f'<br><span class="rel">removal attempts: {backup.remove_attempts}</span>'
    data = ""
    if backup.data_id:
        shown = backup.data_id if len(backup.data_id) <= 48 else f"…{backup.data_id[-46:]}"
        data = f'<code title="{esc(backup.data_id)}">{esc(shown)}</code>'
    if backup.size_mb is not None:
        data += f'<br><span class="rel">{esc(megabytes(backup.size_mb))}</span>'
    flows = [
        workflow_link(view.conductor_ui_url, backup.create_workflow_id, "backup"),
        workflow_link(view.conductor_ui_url, backup.remove_workflow_id, "removal"),
        workflow_link(view.conductor_ui_url, backup.verify_workflow_id, "verification"),
        workflow_link(view.conductor_ui_url, backup.restore_workflow_id, "restore"),
    ]
    return (
        f'<tr id="backup-{backup.id}" class="{classes}" data-backup-id="{backup.id}">'
        f"<td>#{backup.id}{pinned}</td><td>{esc(stamp(backup.scheduled_at, zone))}<br>"
        f'<span class="rel">{esc(relative(backup.scheduled_at, view.now))}</span></td>'
        f"<td>{status}</td><td>{plan}</td><td>{why}</td><td>{data}</td>"
        f"{_verify_cell(backup, zone, view)}"
        f"<td>{'<br>'.join(f for f in flows if f)}</td></tr>"
    )


def verify_badge(status: str | None, details: str | None) -> str:
    """VERIFIED, FAILED or NEVER as a badge; what the verification found on hover."""
    status = status or "NEVER"
    hover = details or VERIFY_MEANING.get(status, status)
    return (
        f'<span class="badge verify verify-{esc(status.lower())}" title="{esc(hover)}">'
        f"{esc(status)}</span>"
    )


def _verify_cell(backup: Backup, zone: ZoneInfo, view: View) -> str:
    """The backup's latest verdict (when, details on hover) and its last restore."""
    status = backup.verify_status or "NEVER"
    cell = verify_badge(status, backup.verify_details)
    if backup.last_verified_at is not None:
        when = backup.last_verified_at
        cell += (
            f'<br><span class="rel verified-at" title="{esc(stamp(when, zone))}">'
            f"{esc(relative(when, view.now))}</span>"
        )
    if status == "FAILED" and backup.verify_details:
        shown = backup.verify_details[:VERIFY_DETAILS_CHARS]
        cell += f'<br><span class="failure-text verify-details">{esc(shown)}</span>'
    if backup.verify_run_status in OPEN_RUN:
        cell += '<br><span class="badge running verifying">verifying</span>'
    restore = backup.restore_status
    if restore:
        word = "restoring" if restore in OPEN_RUN else f"restore {restore}"
        css = "running" if restore in OPEN_RUN else f"restore-{restore.lower()}"
        hover = backup.restore_details or word
        cell += (
            f'<br><span class="badge restore {esc(css)}" title="{esc(hover)}">{esc(word)}</span>'
        )
    return f'<td class="verify-cell" data-verify="{esc(status)}">{cell}</td>'


def _verified_cell(found: queries.Verification, view: View) -> str:
    """When the spec's newest backup was last verified, and its newest proven restorable."""
    parts = []
    newest = found.newest
    if newest is None:
        parts.append('<span class="muted">no backup holds data</span>')
    else:
        parts.append(
            f'newest backup <a href="#backup-{newest.id}">#{newest.id}</a>: '
            + verify_badge(newest.verify_status, newest.verify_details)
        )
        if newest.last_verified_at is not None:
            parts[-1] += (
                f' <span class="rel">{esc(relative(newest.last_verified_at, view.now))}</span>'
            )
    proven = found.proven
    if proven is not None and (newest is None or proven.id != newest.id):
        taken = proven.end_time or proven.scheduled_at
        verified = proven.last_verified_at
        parts.append(
            f'<span class="proven">newest proven restorable: <a href="#backup-{proven.id}">'
            f"#{proven.id}</a>, taken {esc(relative(taken, view.now))}"
            + (f", verified {esc(relative(verified, view.now))}" if verified else "")
            + "</span>"
        )
    elif proven is None and newest is not None:
        parts.append('<span class="muted">no held backup is verified yet</span>')
    if found.failing:
        parts.append(
            f'<span class="failure-text verify-failing">{found.failing} held backup(s) '
            "failed their latest verification</span>"
        )
    last = found.last_verified
    stamp_attr = f' data-last-verified="{esc(last.isoformat())}"' if last else ""
    return f'<td class="verified" colspan="3"{stamp_attr}>{"<br>".join(parts)}</td>'


def spec_page(session: Session, view: View, name: str, asked: SpecQuery) -> tuple[str, str]:
    """(title, body) of one spec's page: its state, its plan's summary, a page of backups."""
    spec = repository.require_spec(session, name)
    zone = ZoneInfo(spec.timezone)
    plan = queries.plan_of(session, spec)
    counts = queries.status_counts(session, [spec.id]).get(spec.id, {})
    show_removed = asked.removed
    if show_removed is None:  # the whole history when it fits one page
        show_removed = sum(counts.values()) <= asked.limit
    statuses = set(BackupStatus) if show_removed else set(BackupStatus) - {BackupStatus.REMOVED}
    backups = repository.list_backups(
        session, spec.id, statuses=statuses, after=asked.after, limit=asked.limit + 1
    )
    more = len(backups) > asked.limit
    backups = backups[: asked.limit]
    last_success = queries.newest_successes(session, [spec.id]).get(spec.id)
    fresh = freshness.judge(spec, last_success, view.now, freshness.deadline())
    verified = queries.verification(session, spec.id)

    policy = policy_of(spec)
    decisions = [_decision(plan, backup) for backup in backups]
    marks = [_mark(b, d, zone, view) for b, d in zip(backups, decisions, strict=True)]
    seen_reasons = list(dict.fromkeys(r for d in decisions if d for r in d.reasons))
    fields = policy.to_fields()
    rows = _rows(seen_reasons, fields, {tier: policy.rule(tier).count for tier in Tier})
    unit = _unit(spec, fresh, view, backups)
    axis = choose_axis([m.time.timestamp() for m in marks], unit, asked.axis)
    picture = render(marks, rows, axis=axis, unit_seconds=unit, zone=zone) if marks else ""

    shown = sum(counts.get(s.value, 0) for s in statuses)
    nav = _pager(spec, zone, asked, backups, more, shown, counts, show_removed, axis)
    table = (
        '<table class="backups"><thead><tr><th>Backup</th>'
        f"<th>Scheduled ({esc(spec.timezone)})</th><th>Status</th><th>Plan</th>"
        "<th>Reasons</th><th>Data</th><th>Verify / restore</th><th>Workflows</th></tr></thead>"
        "<tbody>"
        + "".join(_backup_row(b, d, zone, view) for b, d in zip(backups, decisions, strict=True))
        + "</tbody></table>"
    )
    body = (
        _spec_header(spec, view, fresh, counts, fields, plan, verified)
        + "<h2>Timeline: the retention plan</h2>"
        + nav
        + (f'<div class="card timeline-wrap">{picture}{legend()}</div>' if picture else "")
        + "<h2>Backups</h2>"
        + table
        + nav
    )
    return spec.name, body


def _spec_header(
    spec: BackupSpec,
    view: View,
    fresh: Freshness,
    counts: Mapping[str, int],
    fields: Mapping[str, str],
    plan: RetentionPlan,
    verified: queries.Verification,
) -> str:
    """The spec's facts, its policy and the whole plan's summary."""
    word, state = state_of(spec, view.now)
    overdue = ' data-overdue="true"' if fresh.overdue else ' data-overdue="false"'
    policy_chips = "".join(
        f"<span><code>{esc(tier.value)} {esc(fields.get(FIELD_BY_TIER[tier], ''))}</code></span>"
        for tier in Tier
    )
    ignored = sum(n for s, n in counts.items() if s not in CANDIDATE_STATUSES)
    delay = spec.removal_delay_seconds or 0
    expiring = ""
    if delay or counts.get(EXPIRING):
        expiring = (
            f'<span><strong class="plan-expiring">{counts.get(EXPIRING, 0)}</strong> expiring '
            "(marked for removal, which waits for their expiresAt)</span>"
        )
    if delay:
        policy_chips += f"<span><code>removal delay {esc(duration(delay))}</code></span>"
    return (
        f'<div class="card spec-card" data-spec="{esc(spec.name)}"{overdue}>'
        f'<h1>{esc(spec.name)} <span class="badge state-{word}">{esc(state)}</span></h1>'
        '<table class="facts"><tbody>'
        f"<tr><th>Schedule</th><td>{_schedule_cell(spec)}</td>"
        f"<th>Last success</th>{_last_success_cell(fresh, view)}</tr>"
        f"<tr><th>Next fire</th>{_next_fire_cell(spec, view)}"
        f"<th>Last skip</th>{_skip_cell(spec, view)}</tr>"
        f"<tr><th>State</th><td>{_state_cell(spec, view)}</td>"
        f"<th>Backups</th><td>{_counts(counts)}</td></tr>"
        f"<tr><th>Verified</th>{_verified_cell(verified, view)}</tr>"
        "</tbody></table>"
        f'<h2>Retention policy</h2><div class="chips">{policy_chips}</div>'
        '<p class="summary plan-summary">'
        f'<span>whole plan: <strong class="plan-keep">{len(plan.keep_ids)}</strong> kept</span>'
        f'<span><strong class="plan-remove">{len(plan.remove_ids)}</strong> to remove</span>'
        f"{expiring}"
        f'<span><strong class="plan-ignore">{ignored}</strong> in other statuses</span>'
        '<span class="muted">removals start in retention runs, a capped number per run</span>'
        "</p></div>"
    )


def _pager(
    spec: BackupSpec,
    zone: ZoneInfo,
    asked: SpecQuery,
    backups: Sequence[Backup],
    more: bool,
    shown: int,
    counts: Mapping[str, int],
    show_removed: bool,
    axis: Axis,
) -> str:
    """What the page shows, the links to the newest and older pages, and the toggles."""

    def link(**changes: str | int | None) -> str:
        return esc(spec_url(spec.name, asked.params(**changes)))

    parts = ['<span class="muted">']
    if backups:
        kind = "" if show_removed else " held"
        parts.append(
            f"{len(backups)} backup(s) on this page, of {shown:,}{kind}, newest first: "
            f"{esc(stamp(backups[-1].scheduled_at, zone))} to "
            f"{esc(stamp(backups[0].scheduled_at, zone))}"
        )
    else:
        parts.append("no backup to show")
    parts.append("</span>")
    if asked.after is not None:
        parts.append(f'<a class="newest-page" href="{link(after=None)}">« newest</a>')
    if more:
        parts.append(
            f'<a class="older-page" href="{link(after=backups[-1].id)}">older backups »</a>'
        )
    history = counts.get(BackupStatus.REMOVED.value, 0)
    if history:
        flip, verb = ("0", "hide") if show_removed else ("1", "show")
        parts.append(
            f'<a class="toggle-removed" href="{link(removed=flip, after=None)}">'
            f"{verb} removed history ({history:,})</a>"
        )
    choices = []
    for option in ("auto", "linear", "log"):
        value = None if option == "auto" else option
        if asked.axis == value:
            choices.append(f"<strong>{option}</strong>")
        else:
            choices.append(f'<a href="{link(axis=value)}">{option}</a>')
    parts.append(f'<span class="muted">axis: {" · ".join(choices)} ({axis})</span>')
    return f'<div class="pager">{"".join(parts)}</div>'
