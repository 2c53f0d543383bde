"""What must hold once a scenario has settled, each check a function with a plain message.

Ground truth comes from outside Backtor's database where it can: Conductor's executions
(the twin's history) say what ran and what data a `backup` task handed over; the storage
model says what data still exists. The database is then judged against them.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from backtor.conductor.names import (
    BACKUP,
    CREATE_BACKUP,
    REMOVE,
    REMOVE_BACKUP,
    RESTORE_BACKUP,
    TICK,
    VERIFY_BACKUP,
)
from backtor.conductor.payloads import TaskStatus, WorkflowRun, WorkflowStatus
from backtor.core.cron import CronSchedule
from backtor.core.schedule import MAX_LISTED_MISSES, Timing, first_fire
from backtor.db.models import Backup, BackupSpec, BackupStatus, Fire, FireStatus, SkipReason
from backtor.scheduling.recording import plan_for
from tests.simulation.world import Segment, SpecLife, World

# The true reasons a fire may be SKIPPED for (SkipReason.BUFFERED marks a waiting fire).
SKIP_REASONS: frozenset[str | None] = frozenset(
    reason.value for reason in SkipReason if reason is not SkipReason.BUFFERED
)
# Listed per check; more of one kind says nothing new.
MAX_PER_CHECK = 5


@dataclass(frozen=True)
class FireRow:
    id: int
    spec_id: int
    scheduled_at: datetime
    manual: bool
    status: str
    skip_reason: str | None
    workflow_id: str | None


@dataclass(frozen=True)
class BackupRow:
    id: int
    spec_id: int
    status: str
    data_id: str | None
    pinned: bool
    create_workflow_id: str | None
    expires_at: datetime | None


@dataclass
class Snapshot:
    """Everything the checks read, taken once after settling."""

    world: World
    workflows: list[WorkflowRun]
    specs: dict[str, BackupSpec]
    fires: list[FireRow]
    backups: list[BackupRow]
    keep: dict[str, set[int]]

    @classmethod
    def take(cls, world: World) -> Snapshot:
        with world.db.maker() as session:
            specs = {s.name: s for s in session.scalars(select(BackupSpec))}
            fires = [
                FireRow(*row)
                for row in session.execute(
                    select(
                        Fire.id,
                        Fire.spec_id,
                        Fire.scheduled_at,
                        Fire.manual,
                        Fire.status,
                        Fire.skip_reason,
                        Fire.workflow_id,
                    ).order_by(Fire.id)
                )
            ]
            backups = [
                BackupRow(*row)
                for row in session.execute(
                    select(
                        Backup.id,
                        Backup.spec_id,
                        Backup.status,
                        Backup.data_id,
                        Backup.pinned,
                        Backup.create_workflow_id,
                        Backup.expires_at,
                    ).order_by(Backup.id)
                )
            ]
            keep = {
                name: {int(i) for i in plan_for(session, spec).keep_ids}
                for name, spec in specs.items()
            }
        return cls(world, world.twin.workflows(), specs, fires, backups, keep)

    def runs(self, name: str) -> list[WorkflowRun]:
        return [w for w in self.workflows if w.name == name]


Check = Callable[[Snapshot], list[str]]


def _limit(found: list[str]) -> list[str]:
    if len(found) > MAX_PER_CHECK:
        return [*found[:MAX_PER_CHECK], f"... and {len(found) - MAX_PER_CHECK} more"]
    return found


def one_start_per_fire(snap: Snapshot) -> list[str]:
    """1. Each fire, and each (spec, scheduled time), started at most one create_backup.

    Started: its `backup` task was scheduled. A run the start fence ended (its start reached
    Conductor after its claim's startBy) took no backup and is no start (docs/scheduling.md,
    "The start fence"); the ledger must not keep one as its fire's run (checked below).
    """
    found: list[str] = []
    every_run = snap.runs(CREATE_BACKUP)
    runs = [run for run in every_run if run.tasks_of_type(BACKUP)]
    for run in every_run:
        if run.tasks_of_type(BACKUP) and run.fenced:
            found.append(f"[1 one start per fire] {run.workflow_id} is fenced yet took a backup")
    # Keyed with the spec's name too: SQLite reuses the ids of deleted rows.
    by_fire: defaultdict[tuple[object, object], list[str]] = defaultdict(list)
    by_time: defaultdict[tuple[object, object], list[str]] = defaultdict(list)
    for run in runs:
        by_fire[(run.input.get("backupName"), run.input.get("fireId"))].append(run.workflow_id)
        if not run.input.get("manual"):
            key = (run.input.get("backupName"), run.input.get("scheduledTime"))
            by_time[key].append(run.workflow_id)
    for (name, fire_id), ids in by_fire.items():
        if len(ids) > 1:
            found.append(
                f"[1 one start per fire] {name}: fire {fire_id} started {len(ids)} "
                f"create_backup workflows: {ids}"
            )
    for (name, moment), ids in by_time.items():
        if len(ids) > 1:
            found.append(
                f"[1 one start per fire] {name} at {moment} started {len(ids)} create_backup "
                f"workflows (by backupName and scheduledTime): {ids}"
            )
    fire_of = {run.workflow_id: run.input.get("fireId") for run in every_run}
    fenced = {run.workflow_id for run in every_run if run.fenced}
    for row in snap.fires:
        ran_for = fire_of.get(row.workflow_id or "")
        if row.status == FireStatus.STARTED.value and ran_for != row.id:
            found.append(
                f"[1 one start per fire] fire {row.id} is STARTED with workflow "
                f"{row.workflow_id}, which Conductor ran for fire {ran_for}"
            )
        if row.status == FireStatus.STARTED.value and row.workflow_id in fenced:
            found.append(
                f"[1 one start per fire] fire {row.id} is STARTED with the fenced run "
                f"{row.workflow_id}, which took no backup"
            )
    # The ledger knows every run: a create_backup of a live spec is its fire's STARTED run.
    spec_ids = {spec.id: name for name, spec in snap.specs.items()}
    fires: dict[tuple[object, object], FireRow] = {
        (spec_ids.get(f.spec_id), f.id): f for f in snap.fires
    }
    for run in runs:
        name = str(run.input.get("backupName"))
        if name not in snap.specs:
            continue
        fire = fires.get((name, run.input.get("fireId")))
        if fire is None or fire.status != FireStatus.STARTED.value:
            state = "has no row" if fire is None else f"is {fire.status} ({fire.skip_reason})"
            found.append(
                f"[1 one start per fire] {name}: create_backup {run.workflow_id} ran for fire "
                f"{run.input.get('fireId')} (scheduled {run.input.get('scheduledTime')}), "
                f"but that fire {state}: the ledger lost the run"
            )
        elif fire.workflow_id != run.workflow_id:
            found.append(
                f"[1 one start per fire] {name}: fire {fire.id} records workflow "
                f"{fire.workflow_id}, but Conductor ran {run.workflow_id} for it"
            )
    return _limit(found)


def expected_fires(segment: Segment, until: datetime) -> list[datetime]:
    """The fire times of one stretch of a spec's life: after its start, up to `until`."""
    if not segment.active:
        return []
    timing = Timing(
        CronSchedule(segment.cron),
        ZoneInfo(segment.timezone),
        segment.from_date,
        segment.to_date,
        offset=segment.offset,
    )
    moments: list[datetime] = []
    moment = first_fire(timing, segment.start)
    while moment is not None and moment <= until:
        if segment.to_date is not None and moment >= segment.to_date:
            break
        moments.append(moment)
        moment = timing.next_after(moment)
    return moments


def _segments(life: SpecLife, end: datetime) -> Iterable[tuple[Segment, datetime]]:
    for index, segment in enumerate(life.segments):
        following = life.segments[index + 1].start if index + 1 < len(life.segments) else end
        yield segment, min(following, end)


def no_fire_vanishes(snap: Snapshot) -> list[str]:
    """2. Every due fire time of a live spec has a fire row, STARTED or SKIPPED with a reason."""
    found: list[str] = []
    end = snap.world.end
    if end is None:
        return ["[2 nothing vanishes] the scenario never stopped its schedules (no settle)"]
    for name, life in snap.world.lives.items():
        spec = snap.specs.get(name)
        if spec is None:
            continue  # deleted: its fire rows went with it
        rows = {f.scheduled_at: f for f in snap.fires if f.spec_id == spec.id and not f.manual}
        expected: dict[datetime, Segment] = {}
        for segment, until in _segments(life, end):
            for moment in expected_fires(segment, until):
                expected.setdefault(moment, segment)
        # Documented: of the fire times one late pass passes over, the first 100 are listed
        # (SKIPPED misfire) and the rest only counted. A gap right after 100 listed is that.
        listed = 0
        for moment, segment in sorted(expected.items()):
            row = rows.get(moment)
            where = (
                f"cron {segment.cron!r} in {segment.timezone}, schedule set at "
                f"{segment.start.isoformat()}"
            )
            if row is not None and row.skip_reason == SkipReason.MISFIRE.value:
                listed += 1
            elif row is not None:
                listed = 0
            if row is None and listed >= MAX_LISTED_MISSES:
                continue
            if row is None:
                manual = [
                    f.id for f in snap.fires if f.spec_id == spec.id and f.scheduled_at == moment
                ]
                extra = f" (a manual fire {manual} holds that time)" if manual else ""
                found.append(
                    f"[2 nothing vanishes] {name}: fire time {moment.isoformat()} was due but "
                    f"has no fire row{extra} ({where})"
                )
            elif row.status == FireStatus.PENDING.value:
                found.append(
                    f"[2 nothing vanishes] {name}: fire {row.id} at {moment.isoformat()} is "
                    "still PENDING after settling"
                )
            elif row.status == FireStatus.SKIPPED.value and not row.skip_reason:
                found.append(f"[2 nothing vanishes] {name}: fire {row.id} SKIPPED without a reason")
        for moment, row in sorted(rows.items()):
            if moment not in expected:
                found.append(
                    f"[2 nothing vanishes] {name}: fire {row.id} at {moment.isoformat()} "
                    f"({row.status}) is not a fire time of any schedule the spec had"
                )
    for fire in snap.fires:
        if fire.manual and fire.status == FireStatus.PENDING.value:
            found.append(f"[2 nothing vanishes] manual fire {fire.id} still PENDING after settling")
        # `buffered` marks a PENDING fire (overlapPolicy bufferOne): never a skip, and gone
        # once the fire starts.
        allowed = {None} if fire.status == FireStatus.STARTED.value else SKIP_REASONS
        if fire.status != FireStatus.PENDING.value and fire.skip_reason not in allowed:
            found.append(
                f"[2 nothing vanishes] fire {fire.id} is {fire.status} with reason "
                f"{fire.skip_reason!r}, which is no skip reason"
            )
    return _limit(found)


def produced_data(snap: Snapshot) -> dict[str, tuple[str, str]]:
    """dataId -> (spec name, workflow id), from every `backup` task Conductor saw complete."""
    produced: dict[str, tuple[str, str]] = {}
    for run in snap.runs(CREATE_BACKUP):
        for task in run.tasks:
            if task.task_type == BACKUP and task.status is TaskStatus.COMPLETED:
                data_id = task.output.get("dataId")
                if data_id:
                    produced[str(data_id)] = (str(run.input.get("backupName")), run.workflow_id)
    return produced


def nothing_orphaned(snap: Snapshot) -> list[str]:
    """3. Data a `backup` task handed over is recorded COMPLETED while it exists, and REMOVED
    (by a completed remove_backup) once it is gone; no record claims data that is gone."""
    found: list[str] = []
    storage = snap.world.storage
    produced = produced_data(snap)
    rows = {b.data_id: b for b in snap.backups if b.data_id is not None}
    completed_removals = {
        run.input.get("backupId")
        for run in snap.runs(REMOVE_BACKUP)
        if run.status is WorkflowStatus.COMPLETED
    }
    for data_id, (name, workflow_id) in sorted(produced.items()):
        row = rows.get(data_id)
        exists = data_id in storage
        if name not in snap.specs:
            continue  # a deleted spec: judged by check 6
        if row is None:
            state = "still stored" if exists else "gone from storage"
            found.append(
                f"[3 nothing orphaned] {name}: dataId {data_id} (create_backup {workflow_id}) "
                f"has no backup record; the data is {state}"
            )
        elif row.status == BackupStatus.COMPLETED.value and not exists:
            found.append(
                f"[3 nothing orphaned] {name}: backup {row.id} is COMPLETED but its data "
                f"{data_id} was removed from storage"
            )
        elif row.status == BackupStatus.REMOVED.value and exists:
            found.append(
                f"[3 nothing orphaned] {name}: backup {row.id} is REMOVED but its data "
                f"{data_id} is still stored"
            )
        elif row.status == BackupStatus.REMOVED.value and row.id not in completed_removals:
            found.append(
                f"[3 nothing orphaned] {name}: backup {row.id} is REMOVED without a completed "
                "remove_backup"
            )
        elif row.status not in (BackupStatus.COMPLETED.value, BackupStatus.REMOVED.value):
            found.append(
                f"[3 nothing orphaned] {name}: backup {row.id} of dataId {data_id} is "
                f"{row.status} after settling"
            )
    for row in snap.backups:
        if row.data_id is not None and row.data_id not in produced:
            found.append(
                f"[3 nothing orphaned] backup {row.id} records dataId {row.data_id}, which no "
                "completed backup task produced"
            )
    return _limit(found)


def removals(snap: Snapshot) -> list[WorkflowRun]:
    """The remove_backups that were removals: a run the start fence ended (its start reached
    Conductor after its claim's startBy) removed nothing and is none (docs/scheduling.md,
    "The start fence")."""
    return [run for run in snap.runs(REMOVE_BACKUP) if not run.fenced]


def removals_once(snap: Snapshot) -> list[str]:
    """4. No backup was removed by two completed remove_backups, or by two at once; a fenced
    one took no `remove` task."""
    found: list[str] = []
    for run in snap.runs(REMOVE_BACKUP):
        if run.fenced and run.tasks_of_type(REMOVE):
            found.append(f"[4 removals once] {run.workflow_id} is fenced yet took a remove task")
    by_backup: defaultdict[tuple[str, object], list[WorkflowRun]] = defaultdict(list)
    for run in removals(snap):
        key = (str(run.input.get("backupName")), run.input.get("backupId"))
        by_backup[key].append(run)
    for (name, backup_id), runs in sorted(by_backup.items(), key=lambda item: str(item[0])):
        done = [r.workflow_id for r in runs if r.status is WorkflowStatus.COMPLETED]
        if len(done) > 1:
            found.append(
                f"[4 removals once] {name}: backup {backup_id}: {len(done)} remove_backup "
                f"workflows COMPLETED: {done}"
            )
        spans = sorted(
            (r.start_time or datetime.min, r.end_time or datetime.max, r.workflow_id) for r in runs
        )
        for (_, first_end, first), (second_start, _, second) in itertools.pairwise(spans):
            if second_start < first_end:
                found.append(
                    f"[4 removals once] {name}: backup {backup_id}: remove_backup {first} and "
                    f"{second} were open at the same time"
                )
    return _limit(found)


def retention_applied(snap: Snapshot) -> list[str]:
    """5. Each live spec's COMPLETED and EXPIRING set is its plan's keep set, unless the cap
    held the rest; a pinned backup of a spec not being purged is never removed."""
    found: list[str] = []
    world = snap.world
    cap = world.settings.max_removals_per_run
    held = (BackupStatus.COMPLETED.value, BackupStatus.EXPIRING.value)
    for name, spec in snap.specs.items():
        rows = [b for b in snap.backups if b.spec_id == spec.id]
        completed = {b.id for b in rows if b.status in held}
        keep = snap.keep[name]
        lagging = completed - keep
        if keep - completed:
            found.append(
                f"[5 retention] {name}: the plan keeps {sorted(keep - completed)}, "
                "which are not COMPLETED (nor EXPIRING)"
            )
        if lagging:
            marked = sum(
                1
                for b in rows
                if world.round_before.get(b.id) == BackupStatus.COMPLETED.value
                and b.status not in held
            )
            if marked < cap:
                found.append(
                    f"[5 retention] {name}: COMPLETED {sorted(completed)} but the plan keeps "
                    f"{sorted(keep)}; the last retention run marked {marked} < cap {cap}, so "
                    f"{sorted(lagging)} should be removed"
                )
        if not spec.deleting:
            for b in rows:
                if b.pinned and b.status in (
                    BackupStatus.REMOVING.value,
                    BackupStatus.REMOVED.value,
                ):
                    found.append(f"[5 retention] {name}: pinned backup {b.id} is {b.status}")
    return _limit(found)


def purge_complete(snap: Snapshot) -> list[str]:
    """6. A purged spec disappears and leaves no data behind."""
    found: list[str] = []
    for name, life in snap.world.lives.items():
        if life.purge_requested_at is None and life.deleted_at is None:
            continue
        if name in snap.specs:
            found.append(f"[6 purge] {name}: deleted or purged, but the spec row remains")
        left = sorted(d for d, owner in snap.world.storage.items() if owner == name)
        produced = {d for d, (owner, _) in produced_data(snap).items() if owner == name}
        left = [d for d in left if d in produced]
        if left:
            found.append(f"[6 purge] {name}: purged, but its data {left} is still stored")
    return _limit(found)


EXTRA_TICK = re.compile(r"Backtor runs one scheduler tick \((?P<kept>[^)]+)\)")


def one_tick(snap: Snapshot) -> list[str]:
    """7. (knob `watchdog`) The watchdog keeps exactly one tick, the oldest.

    After the run, one watchdog run with Conductor healthy leaves exactly one tick running,
    the one scheduler_state names; and no tick was ever terminated as an extra while a
    younger one was kept.
    """
    world = snap.world
    if not world.scenario.watchdog:
        return []
    found: list[str] = []
    if world.tick_check is None:
        found.append("[7 one tick] the watchdog was never checked (no settle)")
    else:
        kept, running, named = world.tick_check
        if kept is None or running != [kept] or named != kept:
            found.append(
                f"[7 one tick] after a clean watchdog run: it kept {kept}, Conductor runs "
                f"{running}, scheduler_state names {named}"
            )
    ticks = {run.workflow_id: run for run in snap.runs(TICK)}
    for run in ticks.values():
        match = EXTRA_TICK.fullmatch(run.reason or "")
        if match is None:
            continue
        kept_run = ticks.get(match["kept"])
        if kept_run is None or _age(kept_run) > _age(run):
            found.append(
                f"[7 one tick] tick {run.workflow_id} was terminated as an extra, but the "
                f"tick kept ({match['kept']}) is not older"
            )
    return _limit(found)


def _age(run: WorkflowRun) -> tuple[datetime, str]:
    return (run.start_time or datetime.max.replace(tzinfo=UTC), run.workflow_id)


# The longest the tick may be without a pass, counted from the end of the last pass or the
# last thing that stopped it (a crash, a stall, a refused call, an outage): the watchdog's
# STALL (10 s) from the last beat, its next run (2 s) slowed by Conductor (up to 3 s a
# call), the new tick's delivery (0.6 s) and a slow first step (3 s), about 22 s; the
# largest seen in 2,000 scenarios was 16 s.
TICK_DOWNTIME_MAX_MS = 25_000


def tick_downtimes(world: World) -> list[tuple[int, int, str]]:
    """Stretches of the run (up to its horizon) with no pass of the tick running: (from ms,
    to ms, after what), each from the end of the last pass or disruption (World.disrupt)."""
    horizon = world.scenario.horizon_ms
    passes = sorted(
        (record.at_ms, horizon if record.end_ms is None else min(record.end_ms, horizon))
        for record in world.passes
        if record.ran and record.at_ms <= horizon
    )
    found = []
    covered, after = 0, "the start"
    for start, end in [*passes, (horizon, horizon)]:
        if start > covered:
            since, why = covered, after
            for began, ended, what in world.disruptions:
                if began <= start and ended > since:
                    since, why = ended, what
            if start > since:
                found.append((since, start, why))
        if end > covered:
            covered, after = end, "a pass"
    return found


def the_tick_lives(snap: Snapshot) -> list[str]:
    """8. (knob `watchdog`) The tick is never gone for long: after a pass, or after whatever
    stopped it, the next pass comes within TICK_DOWNTIME_MAX_MS."""
    if not snap.world.scenario.watchdog:
        return []
    return _limit(
        [
            f"[8 the tick lives] no pass from {since / 1000:.3f}s (after {why}) to "
            f"{until / 1000:.3f}s"
            for since, until, why in tick_downtimes(snap.world)
            if until - since > TICK_DOWNTIME_MAX_MS
        ]
    )


def auto_pause(snap: Snapshot) -> list[str]:
    """9. (knob autoPauseAfterFailures) After every commit, each spec's consecutive_failures
    is the number of failed backups recorded in a row since its last success (or since it
    was enabled again), an enabled spec is below its threshold, and a spec that paused
    itself had reached it (tests/simulation/pauses.py)."""
    return _limit(list(snap.world.pause_model.violations))


def removal_delay(snap: Snapshot) -> list[str]:
    """10. (knob removalDelaySeconds) Every EXPIRING backup ends REMOVED or COMPLETED; none
    is removed before its expiresAt; and under a delay no backup retention removed skipped
    the EXPIRING stage (a purge clears expiresAt, and deletes its rows anyway)."""
    found: list[str] = []
    delays = {spec.id: (name, spec.removal_delay_seconds) for name, spec in snap.specs.items()}
    by_key: dict[tuple[str, object], BackupRow] = {
        (delays[b.spec_id][0], b.id): b for b in snap.backups if b.spec_id in delays
    }
    for b in snap.backups:
        name, delay = delays.get(b.spec_id, ("?", 0))
        if b.status == BackupStatus.EXPIRING.value:
            found.append(
                f"[10 removal delay] {name}: backup {b.id} is still EXPIRING after settling "
                f"(expiresAt {b.expires_at})"
            )
        removed = b.status in (
            BackupStatus.REMOVING.value,
            BackupStatus.REMOVE_FAILED.value,
            BackupStatus.REMOVED.value,
        )
        if removed and delay > 0 and b.expires_at is None:
            found.append(
                f"[10 removal delay] {name}: backup {b.id} is {b.status} without having been "
                f"EXPIRING (removalDelaySeconds {delay})"
            )
    for run in removals(snap):
        row = by_key.get((str(run.input.get("backupName")), run.input.get("backupId")))
        if row is None or row.data_id != run.input.get("dataId") or row.expires_at is None:
            continue
        if run.start_time is None or run.start_time < row.expires_at:
            found.append(
                f"[10 removal delay] {row.id}: remove_backup {run.workflow_id} started at "
                f"{run.start_time}, before the backup's expiresAt {row.expires_at}"
            )
    return _limit(found)


def restores_never_meet_removals(snap: Snapshot) -> list[str]:
    """11. A backup being removed is never restored or verified, and one being restored or
    verified is not removed until that ends: per dataId, no restore_backup or verify_backup
    starts once a remove_backup of it started, and no remove_backup starts while one runs.
    (The storage side checks the same on the data: world.storage_do.)"""
    found: list[str] = []
    started: defaultdict[object, list[datetime]] = defaultdict(list)
    for run in removals(snap):
        if run.start_time is not None:
            started[run.input.get("dataId")].append(run.start_time)
    for run in snap.runs(RESTORE_BACKUP) + snap.runs(VERIFY_BACKUP):
        data_id = run.input.get("dataId")
        for removal in started.get(data_id, []):
            if run.start_time is None:
                continue
            if run.start_time >= removal:
                found.append(
                    f"[11 restore] {run.name} {run.workflow_id} of {data_id} started at "
                    f"{run.start_time.isoformat()}, after its remove_backup did ({removal})"
                )
            elif run.end_time is None or removal < run.end_time:
                found.append(
                    f"[11 restore] remove_backup of {data_id} started at {removal.isoformat()} "
                    f"while {run.name} {run.workflow_id} ran"
                )
    return _limit(found)


CHECKS: tuple[Check, ...] = (
    one_start_per_fire,
    no_fire_vanishes,
    nothing_orphaned,
    removals_once,
    retention_applied,
    purge_complete,
    one_tick,
    the_tick_lives,
    auto_pause,
    removal_delay,
    restores_never_meet_removals,
)


def check_all(world: World) -> list[str]:
    snap = Snapshot.take(world)
    world.stats["workflows.create_backup"] = len(snap.runs(CREATE_BACKUP))
    world.stats["workflows.remove_backup"] = len(snap.runs(REMOVE_BACKUP))
    world.stats["workflows.restore_or_verify"] = len(
        snap.runs(RESTORE_BACKUP) + snap.runs(VERIFY_BACKUP)
    )
    world.stats["faults"] = len(world.twin.faults.fired)
    world.stats["auto_pauses"] = world.pause_model.pauses
    world.stats["removed_after_delay"] = sum(
        1 for b in snap.backups if b.expires_at is not None and b.status == "REMOVED"
    )
    found: list[str] = []
    for check in CHECKS:
        found.extend(check(snap))
    return found
