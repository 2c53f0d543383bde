"""The retention plan as a picture: one SVG, tiers as rows, time as the axis.

The first row holds one mark per backup shown (its keep/remove decision, its status, a pin
ring; an EXPIRING backup, marked for removal and waiting out its delay, has a mark of its
own); each tier's row marks the backups that represent that tier's period: filled when the
tier keeps it, hollow when it is older than the tier's N newest. Then the rows of the other
reasons (newest, and any the policy adds) and the pinned backups. Pure: data in, text out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Literal

from backtor.api.ui.html import esc

Axis = Literal["linear", "log"]

WIDTH = 1200
LABEL_WIDTH = 178
PLOT_LEFT = LABEL_WIDTH + 14
PLOT_RIGHT = WIDTH - 22
TOP = 10
ROW_HEIGHT = 28
AXIS_HEIGHT = 40
# With the auto axis, a span of at most this many schedule periods is drawn linear; longer
# histories (a GFS policy keeps minutes next to years) on a log scale of age.
LINEAR_MAX_PERIODS = 150

FAILED_STATUSES = frozenset({"FAILED", "TIMED_OUT"})
FAILURE_STATUSES = FAILED_STATUSES | {"REMOVE_FAILED"}


@dataclass(frozen=True)
class Mark:
    """One backup as drawn."""

    id: int
    time: datetime
    status: str
    action: str  # keep, remove, ignore (the plan's word; ignore for every status but COMPLETED)
    tags: tuple[str, ...]  # the tiers it represents
    reasons: tuple[str, ...]  # why it is kept
    pinned: bool
    href: str  # where a click goes: its workflow in Conductor's UI, else its table row
    title: str  # the tooltip, plain text
    expires_at: datetime | None = None  # EXPIRING: when its removal starts


@dataclass(frozen=True)
class Row:
    """One row under the first: a tier, or a reason, or the pins."""

    key: str  # the tier or reason name; "pinned" for the pins
    label: str
    detail: str  # the rule, e.g. 3@59, or a short word
    active: bool  # a tier with N > 0 (others are drawn dimmed)


@dataclass(frozen=True)
class Scale:
    """Maps times to x: newest shown at the right, oldest at the left."""

    axis: Axis
    newest: float
    oldest: float
    unit: float  # seconds; the log scale is linear for the first few units of age

    def x(self, moment: float) -> float:
        width = PLOT_RIGHT - PLOT_LEFT
        span = self.newest - self.oldest
        if span <= 0:
            return float(PLOT_RIGHT)
        if self.axis == "linear":
            return PLOT_LEFT + (moment - self.oldest) / span * width
        reach = math.log1p(span / self.unit)
        return PLOT_RIGHT - math.log1p((self.newest - moment) / self.unit) / reach * width


def choose_axis(times: Sequence[float], unit: float, wanted: Axis | None) -> Axis:
    """The axis asked for, else linear for short spans and log for long histories."""
    if wanted is not None:
        return wanted
    if len(times) < 2:
        return "linear"
    return "linear" if max(times) - min(times) <= LINEAR_MAX_PERIODS * unit else "log"


_STEPS = (
    1,
    5,
    15,
    30,
    60,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
    91 * 86400,
    182 * 86400,
    365 * 86400,
    2 * 365 * 86400,
    5 * 365 * 86400,
    10 * 365 * 86400,
)
MIN_TICK_GAP = 78  # pixels between two labels


def _age_label(seconds: int) -> str:
    for size, unit in (
        (365 * 86400, "y"),
        (7 * 86400, "w"),
        (86400, "d"),
        (3600, "h"),
        (60, "min"),
    ):
        if seconds >= size and seconds % size == 0:
            return f"\u2212{seconds // size} {unit}"
    if seconds >= 30 * 86400:
        return f"\u2212{round(seconds / (30 * 86400))} mo"
    return f"\u2212{seconds} s"


def _ticks(scale: Scale, zone: tzinfo) -> list[tuple[float, str]]:
    """(x, label) pairs for the axis, at least MIN_TICK_GAP pixels apart."""
    span = scale.newest - scale.oldest
    if span <= 0:
        return []
    ticks: list[tuple[float, str]] = []
    if scale.axis == "log":
        last = -math.inf
        for step in _STEPS:
            if step > span:
                break
            x = scale.x(scale.newest - step)
            clear = PLOT_RIGHT - x >= MIN_TICK_GAP and x - PLOT_LEFT >= MIN_TICK_GAP / 2
            if abs(x - last) >= MIN_TICK_GAP and clear:
                ticks.append((x, _age_label(step)))
                last = x
        ticks.append((float(PLOT_RIGHT), "newest"))
        return ticks
    width = PLOT_RIGHT - PLOT_LEFT
    step = next((s for s in _STEPS if s / span * width >= MIN_TICK_GAP), _STEPS[-1])
    if step >= 30 * 86400:
        return _calendar_ticks(scale, zone, max(1, round(step / (30.4 * 86400))))
    offset = datetime.fromtimestamp(scale.newest, zone).utcoffset()
    shift = offset.total_seconds() if offset is not None else 0.0
    first = math.ceil((scale.oldest + shift) / step) * step - shift  # on the local grid
    moment = first
    while moment <= scale.newest + 1e-6:
        local = datetime.fromtimestamp(moment, zone)
        if step < 86400:
            text = f"{local:%H:%M}" if step >= 60 else f"{local:%H:%M:%S}"
            if local.hour == 0 and local.minute == 0 and local.second == 0:
                text = f"{local:%b %d}"
        elif step < 182 * 86400:
            text = f"{local:%b %d}"
        else:
            text = f"{local:%Y-%m}"
        ticks.append((scale.x(moment), text))
        moment += step
    return ticks


def _calendar_ticks(scale: Scale, zone: tzinfo, months: int) -> list[tuple[float, str]]:
    """Ticks on the first of every `months`-th month (of every January from a year on)."""
    oldest = datetime.fromtimestamp(scale.oldest, zone)
    year, month = oldest.year, oldest.month
    ticks: list[tuple[float, str]] = []
    while True:
        month += 1
        if month > 12:
            year, month = year + 1, 1
        if (month - 1) % months or (months >= 12 and month != 1):
            continue
        moment = datetime(year, month, 1, tzinfo=zone).timestamp()
        if moment > scale.newest:
            return ticks
        text = f"{year}" if months >= 12 else f"{datetime(year, month, 1):%b %Y}"
        ticks.append((scale.x(moment), text))


CROSS = '<path class="cross" d="M-5,-5L5,5M-5,5L5,-5"/>'
SMALL_CROSS = '<path class="cross" d="M-2.5,-2.5L2.5,2.5M-2.5,2.5L2.5,-2.5"/>'
PIN_RING = '<circle class="pin-ring" r="9"/>'
HOURGLASS = '<path class="hourglass" d="M-2.8,-3.4H2.8L-2.8,3.4H2.8Z"/>'


def _mark_shape(mark: Mark) -> str:
    """A cross for a backup that failed; a circle (a crossed ring when its removal keeps
    failing, an hourglass in it while EXPIRING) for the others; a blue ring around a pinned
    one."""
    if mark.status in FAILED_STATUSES:
        return CROSS
    shape = '<circle r="5.5"/>'
    if mark.status == "REMOVE_FAILED":
        shape += SMALL_CROSS
    if mark.status == "EXPIRING":
        shape += HOURGLASS
    if mark.pinned:
        shape += PIN_RING
    return shape


def _classes(mark: Mark) -> str:
    classes = ["mark", mark.action, f"status-{mark.status.lower()}"]
    if mark.pinned:
        classes.append("pinned")
    if mark.status in FAILURE_STATUSES:
        classes.append("failure")
    return " ".join(classes)


def render(
    marks: Sequence[Mark],
    rows: Sequence[Row],
    *,
    axis: Axis,
    unit_seconds: float,
    zone: tzinfo,
) -> str:
    """The timeline's SVG (marks must be the backups shown, any order)."""
    times = [m.time.timestamp() for m in marks]
    scale = Scale(
        axis,
        max(times, default=0.0),
        min(times, default=0.0),
        max(unit_seconds, 1.0),
    )
    all_rows = [Row("backups", "backups", "decision", True), *rows]
    height = TOP + ROW_HEIGHT * len(all_rows) + AXIS_HEIGHT
    bottom = TOP + ROW_HEIGHT * len(all_rows)
    parts: list[str] = [
        f'<svg class="timeline tl" data-axis="{axis}" viewBox="0 0 {WIDTH} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Retention timeline">'
    ]
    ticks = _ticks(scale, zone)
    for index, row in enumerate(all_rows):
        y = TOP + index * ROW_HEIGHT
        band = "band alt" if index % 2 else "band"
        off = "" if row.active else " off"
        parts.append(
            f'<g class="row-label{off}" data-row="{esc(row.key)}">'
            f'<rect class="{band}" x="0" y="{y}" width="{WIDTH}" height="{ROW_HEIGHT}"/>'
            f'<text x="10" y="{y + 18}" font-weight="bold">{esc(row.label)}</text>'
            f'<text class="off" x="{LABEL_WIDTH - 4}" y="{y + 18}" text-anchor="end">'
            f"{esc(row.detail)}</text></g>"
        )
    for x, _label in ticks:
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}"/>')
    parts.append(
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{bottom}" x2="{PLOT_RIGHT}" y2="{bottom}"/>'
    )
    for x, label in ticks:
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}"/>'
            f'<text class="tick" x="{x:.1f}" y="{bottom + 19}" '
            f'text-anchor="{"end" if x >= PLOT_RIGHT - 1 else "middle"}">'
            f"{esc(label)}</text>"
        )
    caption = "age before the newest shown, log scale" if axis == "log" else "time"
    parts.append(f'<text class="tick" x="{PLOT_LEFT}" y="{bottom + 35}">{esc(caption)} →</text>')
    row_y = {
        row.key: TOP + (index + 1) * ROW_HEIGHT + ROW_HEIGHT / 2 for index, row in enumerate(rows)
    }
    first_y = TOP + ROW_HEIGHT / 2
    # Oldest first, so the newest is drawn on top where marks overlap.
    for mark in sorted(marks, key=lambda m: (m.time, m.id)):
        x = scale.x(mark.time.timestamp())
        title = f"<title>{esc(mark.title)}</title>"
        expiry = (
            f' data-expires-at="{esc(mark.expires_at.isoformat())}"'
            if mark.expires_at is not None
            else ""
        )
        parts.append(
            f'<a class="{_classes(mark)}" href="{esc(mark.href)}" data-backup-id="{mark.id}" '
            f'data-action="{esc(mark.action)}" data-status="{esc(mark.status)}"{expiry}>{title}'
            f'<g transform="translate({x:.1f},{first_y:.1f})">{_mark_shape(mark)}</g></a>'
        )
        for row in rows:
            kind = _membership(mark, row)
            if kind is None:
                continue
            middle = row_y[row.key]
            parts.append(
                f'<a href="{esc(mark.href)}" data-backup-id="{mark.id}">{title}'
                f'<rect class="tier-mark {kind}" data-row="{esc(row.key)}" '
                f'x="{x - 4.5:.1f}" y="{middle - 4.5:.1f}" width="9" height="9" rx="2"/></a>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _membership(mark: Mark, row: Row) -> str | None:
    """How `mark` shows in `row`: kept (the row keeps it), represents, pinned, or not at all."""
    if row.key == "pinned":
        return "pinned" if mark.pinned else None
    if row.key in mark.reasons:
        return "kept"
    if row.key in mark.tags:
        return "represents"
    return None


def legend() -> str:
    """What the shapes mean (the same classes as the timeline, drawn small)."""

    def sample(inner: str, classes: str) -> str:
        return (
            '<svg class="swatch tl" width="16" height="16" viewBox="-8 -8 16 16">'
            f'<g class="{classes}">{inner}</g></svg>'
        )

    circle = '<circle r="5.5"/>'
    items = [
        (sample(circle, "mark keep"), "kept"),
        (sample(circle, "mark remove"), "to be removed by the plan"),
        (sample(circle + HOURGLASS, "mark status-expiring"), "expiring: removal delayed"),
        (sample(circle, "mark status-removing"), "removal under way"),
        (sample(circle, "mark status-removed"), "removed"),
        (sample(CROSS, "mark failure"), "failed"),
        (sample(circle + SMALL_CROSS, "mark status-remove_failed"), "removal failing"),
        (sample('<circle r="4"/>' + PIN_RING.replace('r="9"', 'r="6.5"'), "mark keep"), "pinned"),
        (
            sample('<rect class="tier-mark kept" x="-4.5" y="-4.5" width="9" height="9"/>', ""),
            "kept by this row",
        ),
        (
            sample(
                '<rect class="tier-mark represents" x="-4.5" y="-4.5" width="9" height="9"/>', ""
            ),
            "represents its period, beyond N",
        ),
    ]
    return (
        '<div class="legend">' + "".join(f"<span>{s}{esc(t)}</span>" for s, t in items) + "</div>"
    )
