"""Properties of the retention plan over random histories, policies and zones."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from backtor.core.policy import UNIT_BY_TIER, KeepWithin, RetentionPolicy, Tier, TierRule
from backtor.core.retention import (
    BackupRecord,
    Decision,
    RetentionPlan,
    id_sort_key,
    plan_retention,
)

ZONES = [
    ZoneInfo(name)
    for name in ("UTC", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kolkata", "Australia/Lord_Howe")
]
# Offset changes (UTC) where the hourly and daily tiers get interesting.
TRANSITIONS = [
    datetime(2026, 3, 29, 1, tzinfo=UTC),  # Berlin forward
    datetime(2026, 10, 25, 1, tzinfo=UTC),  # Berlin back
    datetime(2018, 11, 4, 3, tzinfo=UTC),  # Sao Paulo forward at midnight
    datetime(2019, 2, 17, 2, tzinfo=UTC),  # Sao Paulo back to 23:00
    datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe back 30 minutes
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),  # Lord Howe forward 30 minutes
]
STATUSES = ["COMPLETED"] * 5 + ["FAILED", "RUNNING", "REMOVED"]

starts = st.one_of(
    st.datetimes(datetime(1990, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
    st.builds(
        lambda at, back: at - timedelta(seconds=back),
        st.sampled_from(TRANSITIONS),
        st.integers(0, 8 * 3600),
    ),
)
# Gaps at every scale, including 0 (equal times) and sub-minute ones.
gaps = st.one_of(
    st.just(0),
    st.integers(0, 90),
    st.integers(0, 2 * 3600),
    st.integers(0, 3 * 86400),
    st.integers(0, 70 * 86400),
).map(lambda seconds: timedelta(seconds=seconds))
ids = st.one_of(
    st.integers(0, 10**6).map(str),
    st.from_regex(r"[a-c][0-9]{1,3}", fullmatch=True),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[BackupRecord], ZoneInfo]:
    tz = draw(st.sampled_from(ZONES))
    moment = draw(starts)
    count = draw(st.integers(0, 40))
    names = draw(st.lists(ids, min_size=count, max_size=count, unique=True))
    backups = []
    for name in names:
        moment += draw(gaps)
        when = moment.astimezone(tz) if draw(st.booleans()) else moment
        status = draw(st.sampled_from(STATUSES))
        pinned = draw(st.integers(0, 9)) == 0
        backups.append(BackupRecord(name, when, status, pinned))
    return draw(st.permutations(backups)), tz


@st.composite
def policies(draw: st.DrawFn) -> RetentionPolicy:
    rules = {}
    for tier in Tier:
        unit = UNIT_BY_TIER[tier]
        count = draw(st.sampled_from([0, 0, 1, 2, 3, 5, 100]))
        reference = draw(st.none() | st.integers(unit.low, unit.high))
        rules[tier.value] = TierRule(count, reference)
    within = draw(
        st.none()
        | st.builds(KeepWithin, days=st.integers(1, 40))
        | st.builds(KeepWithin, hours=st.integers(1, 100), minutes=st.integers(0, 59))
        | st.builds(
            KeepWithin, weeks=st.integers(0, 3), days=st.integers(1, 3), hours=st.integers(0, 23)
        )
    )
    last = draw(st.sampled_from([0, 0, 0, 1, 2, 5, 50]))
    return RetentionPolicy(**rules, keep_within=within, keep_last=last)


def newest_candidate(backups: list[BackupRecord]) -> BackupRecord | None:
    completed = [b for b in backups if b.status == "COMPLETED"]
    return max(completed, key=newness, default=None)


def newness(b: BackupRecord | Decision) -> tuple[datetime, tuple[tuple[int | str, ...], str]]:
    # As UTC: Python never calls an ambiguous (fold) time equal to one in another zone.
    return b.time.astimezone(UTC), id_sort_key(b.id)


def remove(backups: list[BackupRecord], ids: set[str], mark: bool) -> list[BackupRecord]:
    """Apply removals: drop the backups, or mark them REMOVED as the database does."""
    if mark:
        return [replace(b, status="REMOVED") if b.id in ids else b for b in backups]
    return [b for b in backups if b.id not in ids]


SETTINGS = settings(max_examples=300, deadline=None)


@SETTINGS
@given(history=histories(), policy=policies())
def test_newest_and_pinned_are_kept_and_others_never_removed(
    history: tuple[list[BackupRecord], ZoneInfo], policy: RetentionPolicy
) -> None:
    backups, tz = history
    plan = plan_retention(backups, policy, tz)
    assert sorted(d.id for d in plan.decisions) == sorted(b.id for b in backups)
    decision = plan.by_id
    newest = newest_candidate(backups)
    if newest is not None:
        assert decision[newest.id].action == "keep" and "newest" in decision[newest.id].reasons
    for backup in backups:
        if backup.status != "COMPLETED":
            assert decision[backup.id] == Decision(backup.id, backup.time, "ignore", (), ())
        elif backup.pinned:
            assert decision[backup.id].action == "keep" and decision[backup.id].tags == ()
            assert "pinned" in decision[backup.id].reasons
        else:
            assert decision[backup.id].action in ("keep", "remove")
    order = [newness(d) for d in plan.decisions]
    assert order == sorted(order, reverse=True)  # newest first


@SETTINGS
@given(history=histories(), policy=policies(), mark=st.booleans())
def test_idempotent(
    history: tuple[list[BackupRecord], ZoneInfo], policy: RetentionPolicy, mark: bool
) -> None:
    backups, tz = history
    plan = plan_retention(backups, policy, tz)
    again = plan_retention(remove(backups, set(plan.remove_ids), mark), policy, tz)
    assert again.remove_ids == frozenset()
    assert again.keep_ids == plan.keep_ids


@SETTINGS
@given(history=histories(), policy=policies(), mark=st.booleans(), data=st.data())
def test_stable_under_partial_removal(
    history: tuple[list[BackupRecord], ZoneInfo],
    policy: RetentionPolicy,
    mark: bool,
    data: st.DataObject,
) -> None:
    backups, tz = history
    plan = plan_retention(backups, policy, tz)
    some = (
        data.draw(st.sets(st.sampled_from(sorted(plan.remove_ids)))) if plan.remove_ids else set()
    )
    again = plan_retention(remove(backups, some, mark), policy, tz)
    assert again.keep_ids == plan.keep_ids
    assert again.remove_ids == plan.remove_ids - some


@SETTINGS
@given(history=histories(), policy=policies())
def test_each_tier_keeps_exactly_its_newest_representatives(
    history: tuple[list[BackupRecord], ZoneInfo], policy: RetentionPolicy
) -> None:
    backups, tz = history
    plan = plan_retention(backups, policy, tz)
    for tier in Tier:
        count = policy.rule(tier).count
        tagged = [d.id for d in plan.decisions if tier in d.tags]  # newest first
        by_tier = [d.id for d in plan.decisions if tier.value in d.reasons]
        if count == 0:
            assert tagged == [] and by_tier == []
        else:
            assert by_tier == tagged[:count]
            assert len(by_tier) == min(count, len(tagged))


# --- a direct, slow transcription of the rules, to check the fast one against ---------------


def reference_plan(
    backups: list[BackupRecord], policy: RetentionPolicy, tz: ZoneInfo
) -> RetentionPlan:
    """The rules of docs/retention.md spelt out with plain datetimes and tuples."""

    def period_and_unit(tier: Tier, b: BackupRecord) -> tuple[object, int, int]:
        """(period key, unit value, the unit value L means) on the zone's wall clock."""
        local = b.time.astimezone(tz)
        offset = local.utcoffset()
        day = local.date()
        if tier is Tier.MINUTELY:
            return (day, local.hour, local.minute, offset), local.second, 59
        if tier is Tier.HOURLY:
            return (day, local.hour, offset), local.minute, 59
        if tier is Tier.DAILY:
            return day, local.hour, 23
        if tier is Tier.WEEKLY:
            weekday = (day.weekday() + 1) % 7  # 0 = Sunday
            return day - timedelta(days=weekday), weekday, 6
        if tier is Tier.MONTHLY:
            next_month = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
            return (day.year, day.month), day.day, (next_month - timedelta(days=1)).day
        return day.year, day.month, 12

    def representatives(tier: Tier, pool: list[BackupRecord]) -> list[BackupRecord]:
        best: dict[object, BackupRecord] = {}
        for b in sorted(pool, key=newness):
            key, unit, last = period_and_unit(tier, b)
            wanted = policy.rule(tier).reference
            goal = last if wanted is None else min(wanted, last)
            if key not in best or abs(unit - goal) <= abs(
                period_and_unit(tier, best[key])[1] - goal
            ):
                best[key] = b
        return sorted(best.values(), key=newness)

    candidates = [b for b in backups if b.status == "COMPLETED"]
    feeder_of = {
        Tier.HOURLY: Tier.MINUTELY,
        Tier.DAILY: Tier.HOURLY,
        Tier.WEEKLY: Tier.DAILY,
        Tier.MONTHLY: Tier.DAILY,
        Tier.YEARLY: Tier.MONTHLY,
    }
    reps: dict[Tier, list[BackupRecord]] = {}
    for tier in Tier:
        pool = (
            reps[feeder_of[tier]] if tier in feeder_of else [b for b in candidates if not b.pinned]
        )
        reps[tier] = representatives(tier, pool)
    newest = max(candidates, key=newness, default=None)
    by_age = sorted(candidates, key=newness, reverse=True)
    last = by_age[: policy.keep_last]
    within: list[BackupRecord] = []
    if newest is not None and policy.keep_within is not None:
        local = newest.time.astimezone(tz).replace(tzinfo=None)
        rule = policy.keep_within
        back = local - timedelta(days=7 * rule.weeks + rule.days)
        cutoff = back.replace(tzinfo=tz).astimezone(UTC) - timedelta(
            hours=rule.hours, minutes=rule.minutes, seconds=rule.seconds
        )
        within = [b for b in candidates if b.time >= cutoff]
    decisions = []
    for b in sorted(backups, key=newness, reverse=True):
        if b.status != "COMPLETED":
            decisions.append(Decision(b.id, b.time, "ignore", (), ()))
            continue
        counted = [t for t in Tier if policy.rule(t).count > 0]
        tags = () if b.pinned else tuple(t for t in counted if b in reps[t])
        reasons = [t.value for t in counted if b in reps[t][-policy.rule(t).count :]]
        reasons += ["newest"] if b is newest else []
        reasons += ["within"] if b in within else []
        reasons += ["last"] if b in last else []
        reasons += ["pinned"] if b.pinned else []
        decisions.append(
            Decision(b.id, b.time, "keep" if reasons else "remove", tags, tuple(reasons))
        )
    return RetentionPlan(tuple(decisions))


@SETTINGS
@given(history=histories(), policy=policies())
def test_agrees_with_a_direct_transcription_of_the_rules(
    history: tuple[list[BackupRecord], ZoneInfo], policy: RetentionPolicy
) -> None:
    backups, tz = history
    assert plan_retention(backups, policy, tz) == reference_plan(backups, policy, tz)


@SETTINGS
@given(history=histories(), policy=policies())
def test_within_and_last_add_no_tags_and_change_no_tier(
    history: tuple[list[BackupRecord], ZoneInfo], policy: RetentionPolicy
) -> None:
    backups, tz = history
    plain = replace(policy, keep_within=None, keep_last=0)
    plan = plan_retention(backups, policy, tz)
    for with_recent, without in zip(
        plan.decisions, plan_retention(backups, plain, tz).decisions, strict=True
    ):
        assert with_recent.tags == without.tags
        tiers = [r for r in with_recent.reasons if r not in ("within", "last")]
        assert tiers == list(without.reasons)
