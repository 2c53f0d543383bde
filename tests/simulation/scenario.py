"""A seed becomes a scenario: specs, actors, faults and crash rates, all from random.Random(seed).

Everything the world does later is drawn from a second generator seeded from the same seed,
so a seed replays exactly. Scenarios are small on purpose: the CI run needs thousands.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from backtor.conductor.twin import FaultKind
from backtor.core.schedule import OverlapPolicy
from backtor.core.specs import SpecDraft

# Zones and the years they changed clocks in (São Paulo stopped in 2019).
ZONES: tuple[tuple[str, int], ...] = (
    ("Europe/Berlin", 2030),
    ("America/Sao_Paulo", 2018),
    ("America/New_York", 2030),
    ("Australia/Sydney", 2030),
)
API_ACTIONS: tuple[str, ...] = (
    "put_same",
    "put_change",
    "pin",
    "unpin",
    "trigger",
    "purge",
    "operator_retry",
)


@dataclass(frozen=True)
class SpecSetup:
    """A spec the API creates `created_ms` after the start."""

    draft: SpecDraft
    created_ms: int


@dataclass(frozen=True)
class Scenario:
    seed: int
    start: datetime
    zone: str
    horizon_ms: int
    specs: tuple[SpecSetup, ...]
    replicas: int
    backtor_workers: int
    interleave: bool
    fault_rate: float
    fault_kinds: tuple[FaultKind, ...]
    outages: tuple[tuple[int, int], ...]  # (start ms, length ms): Conductor unreachable
    crash_rate: float
    storage_fail: float
    storage_hang: float
    remove_fail: float
    api_gap_ms: int
    api_weights: tuple[int, ...] = field(default=(2, 2, 3, 2, 3, 0, 1))
    purge_at_ms: int | None = None
    max_removals: int = 20
    removal_retry_seconds: float = 30.0
    replica_stall: float = 0.0  # probability that a replica stalls (GC pause) before a pass
    duplicate_gap_ms: int = 0  # mean time between extra deliveries of the tick (0: none)
    api_clients: int = 1
    # The tick as Backtor runs it: a backtor_scheduler workflow the replicas' watchdogs keep
    # alive (crashing too), its evaluate_schedule task run by schedule_passes; else the tick
    # is handed to replicas directly, failover modelled by FAILOVER_MS (tests/simulation/world).
    watchdog: bool = False
    # Knob of issue 11: the chance an API request is followed by a restore or verify one.
    restore_rate: float = 0.0
    # Knob of issue 14: fires claimed per chunk of a pass's starts (fires.START_CHUNK), small
    # here so that the start pipeline (claim ahead, record behind) runs across chunks.
    start_chunk: int = 64
    # Knob of issue 14 (shards): (at ms, K) moments at which every replica's
    # BACKTOR_TICK_SHARDS becomes K (watchdog scenarios only: the watchdog writes K).
    shard_changes: tuple[tuple[int, int], ...] = ()

    def describe(self) -> str:
        """One line for a failure report."""
        specs = "; ".join(
            f"{s.draft.name} cron={s.draft.backup_cron_string!r} tz={s.draft.timezone} "
            f"grace={s.draft.misfire_grace_seconds} timeout={s.draft.timeout_seconds} "
            f"delay={s.draft.removal_delay_seconds} autopause={s.draft.auto_pause_after_failures} "
            f"overlap={s.draft.overlap_policy} jitter={s.draft.jitter_seconds} "
            f"verify={s.draft.verify_cron_string!r}/{s.draft.verify_sample_rate} "
            f"at+{s.created_ms}ms"
            for s in self.specs
        )
        return (
            f"seed={self.seed} start={self.start.isoformat()} horizon={self.horizon_ms}ms "
            f"replicas={self.replicas} interleave={self.interleave} faults={self.fault_rate}"
            f"{[k.value for k in self.fault_kinds]} outages={list(self.outages)} "
            f"crash={self.crash_rate} storage(fail={self.storage_fail},hang={self.storage_hang},"
            f"rmfail={self.remove_fail}) purge_at={self.purge_at_ms} "
            f"cap={self.max_removals} api_clients={self.api_clients} "
            f"watchdog={self.watchdog} restores={self.restore_rate} chunk={self.start_chunk} "
            f"shards={list(self.shard_changes)} "
            f"| {specs}"
        )


@lru_cache(maxsize=64)
def transitions(zone: str, year: int) -> tuple[datetime, ...]:
    """The instants (UTC, whole seconds) at which `zone` changed its offset in `year`."""
    tz = ZoneInfo(zone)
    found: list[datetime] = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    before = day.astimezone(tz).utcoffset()
    while day.year == year:
        after_day = day + timedelta(days=1)
        after = after_day.astimezone(tz).utcoffset()
        if after != before:
            low, high = day, after_day  # offset(low) == before, offset(high) == after
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(tz).utcoffset() == before:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        day, before = after_day, after
    return tuple(found)


def _other_cron(rng: random.Random, period: int, local_hour: int, minute_level: bool) -> str:
    """A second spec's cron: mostly aligned with the busy one (a pass serves both)."""
    second = rng.randrange(60)
    kinds = ("aligned", "offset", "twice", "minute", "dst_hour", "every_second")
    weights = (0, 0, 0, 3, 2, 0) if minute_level else (5, 2, 1, 2, 1, 1)
    kind = rng.choices(kinds, weights=weights)[0]
    if kind == "aligned":
        return f"*/{period * rng.choice((1, 2, 3))} * * * * *"
    if kind == "offset":
        return f"{rng.randrange(1, period)}/{period} * * * * *"
    if kind == "twice":
        first, other = sorted(rng.sample(range(60), 2))
        return f"{first},{other} * * * * *"
    if kind == "minute":
        return f"{second} * * * * *"
    if kind == "dst_hour":
        return f"{second} * {local_hour} * * *"  # every minute of the hour of a DST change
    return "*/1 * * * * *"


def _retention(rng: random.Random) -> dict[str, str | None]:
    """Small policies: most backups of a short scenario are removed, so removals run."""
    return {
        "retentionMinutely": rng.choice(("0", "1", "1", "2", "2", "3", "2@30", "3@L", "4@0")),
        "retentionHourly": rng.choice((None, "0", "0", "1", "2@15")),
        "retentionDaily": rng.choice((None, "0", "1")),
        "retentionWeekly": rng.choice((None, "0")),
        "retentionMonthly": rng.choice((None, "0")),
        "retentionYearly": rng.choice((None, "0")),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class _Timing:
    timezone: str
    cron: str | None  # None: derived from the retention policy (every minute or coarser)


def _timings(
    rng: random.Random, zone: str, start: datetime, near_change: bool, period: int
) -> list[_Timing]:
    """The busy spec (every `period` s), then 0-2 others.

    Near a DST change only minute-level crons go in the changing zone: latest_fire_at_or_before
    used to walk an hour of fire times within a day of a change (60-100 ms a call for a
    per-second cron). It bisects now; the draw stays as it was so that seeds keep their
    scenarios.
    """
    busy_zone = "UTC" if near_change or rng.random() < 0.4 else zone
    offset = rng.randrange(period)
    timings = [_Timing(busy_zone, f"{offset}/{period} * * * * *")]
    for _ in range(rng.choice((0, 1, 1, 2))):
        timezone = zone if rng.random() < (0.6 if near_change else 0.5) else "UTC"
        minute_level = near_change and timezone != "UTC"
        if rng.random() < 0.08:
            timings.append(_Timing(timezone, None))
            continue
        local_hour = start.astimezone(ZoneInfo(timezone)).hour
        timings.append(_Timing(timezone, _other_cron(rng, period, local_hour, minute_level)))
    return timings


def spec_draft(
    rng: random.Random, name: str, timing: _Timing, start: datetime, horizon_ms: int
) -> SpecDraft:
    """One spec's fields, drawn as a user would send them (validated later by normalise_spec)."""
    from_date = to_date = None
    if rng.random() < 0.07:
        from_date = _iso(start + timedelta(milliseconds=rng.randrange(horizon_ms // 2)))
    if rng.random() < 0.07:
        to_date = _iso(start + timedelta(milliseconds=rng.randrange(horizon_ms // 3, horizon_ms)))
        if from_date is not None and to_date <= from_date:
            to_date = None
    return SpecDraft(
        name=name,
        enabled=rng.random() < 0.97,
        from_date=from_date,
        to_date=to_date,
        backup_cron_string=timing.cron,
        timezone=timing.timezone,
        worker_config='{"kind": "sim"}',
        timeout_seconds=None if rng.random() < 0.7 else rng.randrange(3, 30),
        misfire_grace_seconds=rng.choice((10, 15, 30, 60, 3600)),
        retention=_retention(rng),
    )


def generate(seed: int) -> Scenario:
    rng = random.Random(seed)
    zone, year = rng.choice(ZONES)
    near_change = rng.random() < 0.3
    # The busy spec fires every `period` s, 6 to 16 times: scenarios stay small, so that
    # thousands run in CI, and busy, so that each pass has work.
    period = rng.choice((2, 3, 4, 5))
    horizon_ms = period * 1000 * rng.randrange(6, 17)
    if near_change:  # the change falls inside the scenario
        change = rng.choice(transitions(zone, year))
        start = change - timedelta(milliseconds=rng.randrange(0, horizon_ms))
    else:  # two days away from any change in these zones
        start = datetime(year, 6, 15, 12, tzinfo=UTC) + timedelta(seconds=rng.randrange(86_400))
    start = start.replace(microsecond=rng.randrange(1000) * 1000)
    timings = _timings(rng, zone, start, near_change, period)
    specs = tuple(
        SpecSetup(
            spec_draft(rng, f"s{i}", timing, start, horizon_ms),
            0 if i == 0 or rng.random() < 0.7 else rng.randrange(horizon_ms // 2),
        )
        for i, timing in enumerate(timings)
    )
    kinds = tuple(
        k
        for k in (
            FaultKind.UNAVAILABLE,
            FaultKind.THROTTLED,
            FaultKind.SERVER_ERROR,
            FaultKind.LOST_ANSWER,
            FaultKind.BAD_ANSWER,
        )
        if rng.random() < 0.5
    ) or (FaultKind.LOST_ANSWER,)
    outages = tuple(
        (rng.randrange(horizon_ms), rng.randrange(3_000, 40_000))
        for _ in range(rng.choice((0, 0, 0, 1, 2)))
    )
    scenario = Scenario(
        seed=seed,
        start=start,
        zone=zone,
        horizon_ms=horizon_ms,
        specs=specs,
        replicas=rng.choice((2, 2, 3)),
        backtor_workers=rng.choice((1, 2)),
        interleave=rng.random() < 0.75,
        fault_rate=rng.choice((0.0, 0.0, 0.02, 0.05, 0.1, 0.2)),
        fault_kinds=kinds,
        outages=outages,
        crash_rate=rng.choice((0.0, 0.05, 0.1, 0.2)),
        storage_fail=rng.choice((0.0, 0.1, 0.3)),
        storage_hang=rng.choice((0.0, 0.05, 0.15)),
        remove_fail=rng.choice((0.0, 0.1, 0.3)),
        api_gap_ms=horizon_ms // rng.choice((3, 5, 8)),
        purge_at_ms=rng.randrange(horizon_ms) if rng.random() < 0.3 else None,
        max_removals=rng.choice((1, 2, 3, 20)),
        removal_retry_seconds=rng.choice((1.0, 2.0, 5.0)),
        replica_stall=rng.choice((0.0, 0.0, 0.05)),
        duplicate_gap_ms=rng.choice((0, 0, 15_000)),
        api_clients=rng.choice((1, 1, 2)),
        watchdog=rng.random() < 0.4,  # drawn last: the other fields of a seed stay as they were
    )
    return _shard_changes(
        _start_chunks(_restores(_jitters(_overlap_policies(_schedule_controls(rng, scenario)))))
    )


# Knobs of issue 12, per spec: a removal delay (s) and autoPauseAfterFailures.
REMOVAL_DELAYS: tuple[int, ...] = (1, 2, 5, 15)
AUTO_PAUSES: tuple[int, ...] = (1, 1, 2, 3)


def _schedule_controls(rng: random.Random, scenario: Scenario) -> Scenario:
    """removalDelaySeconds and autoPauseAfterFailures for some specs, drawn after every
    other field, so a seed's scenario is otherwise what it was before these knobs."""
    delays = rng.random() < 0.4
    pauses = rng.random() < 0.4
    specs = tuple(
        dataclasses.replace(
            setup,
            draft=dataclasses.replace(
                setup.draft,
                removal_delay_seconds=rng.choice(REMOVAL_DELAYS) if delays else None,
                auto_pause_after_failures=rng.choice(AUTO_PAUSES) if pauses else None,
            ),
        )
        for setup in scenario.specs
    )
    # Auto-pause needs failures to act on: a failing storage target, more often than not.
    failing = rng.choice((scenario.storage_fail, 0.3, 0.5)) if pauses else scenario.storage_fail
    return dataclasses.replace(scenario, specs=specs, storage_fail=failing)


# overlapPolicy of a spec; None: not sent (the default, skip).
OVERLAP_CHOICES: tuple[str | None, ...] = (
    None,
    None,
    *(policy.value for policy in OverlapPolicy if policy is not OverlapPolicy.SKIP),
)


def _overlap_policies(scenario: Scenario) -> Scenario:
    """overlapPolicy for each spec, from a stream of its own: every other draw of a seed
    stays as it was."""
    return _per_spec(scenario, "overlap", "overlap_policy", OVERLAP_CHOICES)


def _per_spec(scenario: Scenario, stream: str, field: str, choices: tuple[Any, ...]) -> Scenario:
    """One draw from `choices` for each spec's draft `field`, from the seed's `stream`."""
    rng = random.Random(f"{scenario.seed}:{stream}")
    specs = tuple(
        dataclasses.replace(
            setup, draft=dataclasses.replace(setup.draft, **{field: rng.choice(choices)})
        )
        for setup in scenario.specs
    )
    return dataclasses.replace(scenario, specs=specs)


# jitterSeconds of a spec (issue 14); None: not sent (0). Up to a few periods of the busy
# spec, so shifted fires land inside the scenario and its DST change.
JITTER_CHOICES: tuple[int | None, ...] = (None, None, None, 1, 3, 7, 20)


def _jitters(scenario: Scenario) -> Scenario:
    """jitterSeconds for some specs, from a stream of its own (every other draw stays)."""
    return _per_spec(scenario, "jitter", "jitter_seconds", JITTER_CHOICES)


def _restores(scenario: Scenario) -> Scenario:
    """Knob `restore_rate` (issue 11): the chance that an API request is followed by a
    restore or verify request; drawn from a stream of its own (every other draw stays)."""
    rng = random.Random(f"{scenario.seed}:restores")
    scenario = dataclasses.replace(scenario, restore_rate=rng.choice((0.0, 0.0, 0.3, 0.6)))
    scenario = _per_spec(scenario, "verify-cron", "verify_cron_string", VERIFY_CRONS)
    return _per_spec(scenario, "verify-sample", "verify_sample_rate", VERIFY_SAMPLES)


# Scheduled verification of a spec (verifyCronString, verifySampleRate); None: not sent.
VERIFY_CRONS: tuple[str | None, ...] = (None, None, "*/3 * * * * *", "*/7 * * * * *")
VERIFY_SAMPLES: tuple[float | None, ...] = (None, 0.0, 0.5, 1.0)


def _shard_changes(scenario: Scenario) -> Scenario:
    """Knob `shard_changes` (issue 14, shards), from a stream of its own: in half of the
    watchdog scenarios K changes one to three times mid-scenario (1, 2 or 3 shards)."""
    rng = random.Random(f"{scenario.seed}:shards")
    if not scenario.watchdog or rng.random() < 0.5:
        return scenario
    moments = sorted(rng.randrange(0, scenario.horizon_ms) for _ in range(rng.randint(1, 3)))
    changes = tuple((at, rng.choice((1, 2, 3))) for at in moments)
    return dataclasses.replace(scenario, shard_changes=changes)


def _start_chunks(scenario: Scenario) -> Scenario:
    """Knob `start_chunk` (issue 14), from a stream of its own (every other draw stays)."""
    rng = random.Random(f"{scenario.seed}:start-chunk")
    return dataclasses.replace(scenario, start_chunk=rng.choice((1, 2, 3, 64)))
