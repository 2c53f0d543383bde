"""The retention plan, against plans worked out by hand (see docs/retention.md)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backtor.core.cron import next_fire, parse_cron
from backtor.core.policy import DEFAULT_POLICY, RetentionPolicy, Tier
from backtor.core.retention import BackupRecord, RetentionPlan, id_sort_key, plan_retention

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")

MIN, HOUR, DAY, WEEK, MONTH, YEAR = Tier


def policy(spec: str) -> RetentionPolicy:
    """``"daily=0@3 weekly=0"`` -> policy; tiers not named take their defaults."""
    pairs = (item.split("=") for item in spec.split())
    return RetentionPolicy.from_fields({f"retention{k.capitalize()}": v for k, v in pairs})


def only(spec: str) -> RetentionPolicy:
    """Like policy(), but tiers not named keep nothing."""
    named = dict(item.split("=") for item in spec.split())
    return policy(" ".join(f"{t.value}={named.get(t.value, '0')}" for t in Tier))


def kept(plan: RetentionPlan) -> dict[str, tuple[tuple[Tier, ...], tuple[str, ...]]]:
    """id -> (tags, reasons) of every kept backup."""
    return {d.id: (d.tags, d.reasons) for d in plan.decisions if d.action == "keep"}


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- the default policy on one backup a day ----------------------------------------------


def test_default_policy_on_800_daily_backups() -> None:
    first = date(2024, 1, 1)
    backups = [
        BackupRecord(
            (first + timedelta(days=i)).isoformat(),
            datetime.combine(first + timedelta(days=i), datetime.min.time(), UTC).replace(
                hour=23, minute=59, second=59
            ),
        )
        for i in range(800)
    ]
    plan = plan_retention(backups, DEFAULT_POLICY, UTC_ZONE)
    # The last backup is Tuesday 2026-03-10. Weeks run Sunday..Saturday, so the running
    # week is Sun 03-08..Tue 03-10, and its newest (Tue) is nearest Saturday.
    assert kept(plan) == {
        # daily: the 4 newest days
        "2026-03-10": (
            (DAY, WEEK, MONTH, YEAR),
            ("daily", "weekly", "monthly", "yearly", "newest"),
        ),
        "2026-03-09": ((DAY,), ("daily",)),
        "2026-03-08": ((DAY,), ("daily",)),
        "2026-03-07": ((DAY, WEEK), ("daily", "weekly")),  # Saturday of the week before
        # weekly: Saturdays 02-28, 02-21; monthly: 02-28 and 01-31 (also a Saturday)
        "2026-02-28": ((DAY, WEEK, MONTH), ("weekly", "monthly")),
        "2026-02-21": ((DAY, WEEK), ("weekly",)),
        "2026-01-31": ((DAY, WEEK, MONTH), ("monthly",)),
        # yearly: the running year's newest month (March) and December of 2025
        "2025-12-31": ((DAY, MONTH, YEAR), ("yearly",)),
    }
    assert len(plan.remove_ids) == 792
    assert plan.ignore_ids == frozenset()
    # Removed backups still report the tiers they represent.
    assert plan.tags_by_id["2025-11-30"] == (DAY, MONTH)  # a Sunday, the last of November
    assert plan.tags_by_id["2025-11-29"] == (DAY, WEEK)  # a Saturday
    assert plan.tags_by_id["2025-11-28"] == (DAY,)
    assert [d.id for d in plan.decisions[:2]] == ["2026-03-10", "2026-03-09"]  # newest first


# --- the seed's "every 4 hours" ---------------------------------------------------------------

SEED_POLICY = "hourly=6 daily=0@3 weekly=0 monthly=2@L yearly=0"


def every_four_hours(tz: ZoneInfo, last: datetime) -> list[BackupRecord]:
    """Backups at each fire of ``0 0 */4 ? * *`` from 2026-01-01 00:00 local; ids 1, 2, ..."""
    schedule = parse_cron("0 0 */4 ? * *")
    moment = datetime(2026, 1, 1, tzinfo=tz) - timedelta(seconds=1)
    backups: list[BackupRecord] = []
    while (moment := next_fire(schedule, moment, tz)) <= last:
        backups.append(BackupRecord(str(len(backups) + 1), moment))
    return backups


@pytest.mark.parametrize("tz", [UTC_ZONE, BERLIN])
def test_every_four_hours_for_four_months(tz: ZoneInfo) -> None:
    # 2026-01-01 00:00 .. 2026-04-30 20:00 local: 120 days x 6 = 720 backups. Day d
    # (0 = Jan 1) holds ids 6d+1 (00:00) .. 6d+6 (20:00); Mar 31 is day 89, Apr 30 day 119.
    backups = every_four_hours(tz, datetime(2026, 4, 30, 20, tzinfo=tz))
    assert len(backups) == 720
    plan = plan_retention(backups, policy(SEED_POLICY), tz)
    assert kept(plan) == {
        "720": ((HOUR,), ("hourly", "newest")),  # Apr 30 20:00
        "719": ((HOUR,), ("hourly",)),
        "718": ((HOUR,), ("hourly",)),
        "717": ((HOUR,), ("hourly",)),
        "716": ((HOUR, MONTH), ("hourly", "monthly")),  # Apr 30 04:00, the running month
        "715": ((HOUR,), ("hourly",)),  # Apr 30 00:00
        "536": ((HOUR, MONTH), ("monthly",)),  # Mar 31 04:00
    }
    assert plan.by_id["536"].time.astimezone(tz) == datetime(2026, 3, 31, 4, tzinfo=tz)
    # Every backup represents its hour; the monthly ones are the last days' 04:00.
    monthly = {d.id for d in plan.decisions if MONTH in d.tags}
    assert monthly == {"716", "536", "350", "182"}  # Apr 30, Mar 31, Feb 28, Jan 31
    assert all(HOUR in d.tags for d in plan.decisions)


def test_every_four_hours_ending_mid_month_counts_the_running_months_newest() -> None:
    # Ends Mon 2026-04-20 00:00 (day 109, id 655): the only backup of Apr 20 so far is the
    # day's representative, and the nearest to the month's end: April's monthly one.
    backups = every_four_hours(BERLIN, datetime(2026, 4, 20, 0, tzinfo=BERLIN))
    plan = plan_retention(backups, policy(SEED_POLICY), BERLIN)
    assert kept(plan) == {
        "655": ((HOUR, MONTH), ("hourly", "monthly", "newest")),  # Apr 20 00:00
        "654": ((HOUR,), ("hourly",)),  # Apr 19 20:00
        "653": ((HOUR,), ("hourly",)),
        "652": ((HOUR,), ("hourly",)),
        "651": ((HOUR,), ("hourly",)),
        "650": ((HOUR,), ("hourly",)),  # Apr 19 04:00
        "536": ((HOUR, MONTH), ("monthly",)),  # Mar 31 04:00
    }


# --- DST ---------------------------------------------------------------------------------------


def every(start: datetime, step: timedelta, count: int) -> list[BackupRecord]:
    return [BackupRecord(str(i), start + i * step) for i in range(count)]


def test_berlin_fall_back_repeated_hour_is_two_hourly_periods() -> None:
    # Every 20 minutes from 2026-10-24 22:00Z (00:00 CEST) to 03:40Z (04:40 CET).
    # Local hours: 0-2 -> 00 CEST, 3-5 -> 01 CEST, 6-8 -> 02 CEST, 9-11 -> 02 CET,
    # 12-14 -> 03 CET, 15-17 -> 04 CET. Hourly L = minute 59: the :40 backups.
    backups = every(utc(2026, 10, 24, 22), timedelta(minutes=20), 18)
    plan = plan_retention(backups, only("hourly=100 daily=5@2"), BERLIN)
    assert kept(plan) == {
        "17": ((HOUR,), ("hourly", "newest")),
        "14": ((HOUR,), ("hourly",)),
        # both 02:40s; daily wants hour 2: a tie, the newer (CET) one wins
        "11": ((HOUR, DAY), ("hourly", "daily")),
        "8": ((HOUR,), ("hourly",)),
        "5": ((HOUR,), ("hourly",)),
        "2": ((HOUR,), ("hourly",)),
    }


def test_berlin_spring_forward_day_has_no_hour_two() -> None:
    # Hourly at :30 from 2026-03-28 23:30Z: 00:30 CET, 01:30 CET, 03:30, 04:30, 05:30 CEST.
    # Daily wants hour 2: 01:30 and 03:30 are equally near; the newer wins.
    backups = every(utc(2026, 3, 28, 23, 30), timedelta(hours=1), 5)
    plan = plan_retention(backups, only("daily=1@2"), BERLIN)
    assert kept(plan) == {"4": ((), ("newest",)), "2": ((DAY,), ("daily",))}


def test_sao_paulo_fall_back_at_midnight() -> None:
    # 2019-02-17 00:00 -02 -> 2019-02-16 23:00 -03 (02:00Z). Every 30 min from 23:00Z:
    # 0 21:00, 1 21:30, 2 22:00, 3 22:30, 4 23:00 -02, 5 23:30 -02, 6 23:00 -03,
    # 7 23:30 -03 (all Feb 16), 8 00:00, 9 00:30, 10 01:00, 11 01:30 (Feb 17).
    backups = every(utc(2019, 2, 16, 23), timedelta(minutes=30), 12)
    plan = plan_retention(backups, only("hourly=100@0 daily=5"), SAO_PAULO)
    assert kept(plan) == {
        "11": ((), ("newest",)),
        "10": ((HOUR, DAY), ("hourly", "daily")),  # Feb 17: hour 1 is nearest 23
        "8": ((HOUR,), ("hourly",)),
        "6": ((HOUR, DAY), ("hourly", "daily")),  # Feb 16: two 23:00s; the newer
        "4": ((HOUR,), ("hourly",)),  # the first 23:00 is an hour of its own
        "2": ((HOUR,), ("hourly",)),
        "0": ((HOUR,), ("hourly",)),
    }


def test_sao_paulo_spring_forward_day_starts_at_one() -> None:
    # 2018-11-04 00:00 -03 -> 01:00 -02 (03:00Z). Hourly at :30 from 00:30Z:
    # 0 21:30, 1 22:30, 2 23:30 (Nov 3); 3 01:30, 4 02:30, 5 03:30 (Nov 4).
    # Daily wants hour 0, with no wrap-around: 21:30 on Nov 3, 01:30 on Nov 4.
    backups = every(utc(2018, 11, 4, 0, 30), timedelta(hours=1), 6)
    plan = plan_retention(backups, only("daily=5@0"), SAO_PAULO)
    assert kept(plan) == {
        "5": ((), ("newest",)),
        "3": ((DAY,), ("daily",)),
        "0": ((DAY,), ("daily",)),
    }


# --- candidates, pins, the newest, ties ----------------------------------------------------------


def test_only_completed_backups_are_candidates() -> None:
    backups = [
        BackupRecord("1", utc(2026, 1, 1, 10)),
        BackupRecord("2", utc(2026, 1, 1, 23), status="FAILED"),  # nearer R, but not a candidate
        BackupRecord("3", utc(2026, 1, 2, 10), status="RUNNING"),
        BackupRecord("4", utc(2026, 1, 2, 11), status="completed"),  # statuses match exactly
    ]
    plan = plan_retention(backups, only("daily=3"), UTC_ZONE)
    assert [(d.id, d.action, d.tags, d.reasons) for d in plan.decisions] == [
        ("4", "ignore", (), ()),
        ("3", "ignore", (), ()),
        ("2", "ignore", (), ()),
        ("1", "keep", (DAY,), ("daily", "newest")),
    ]


def test_nothing_completed_means_nothing_kept_or_removed() -> None:
    backups = [BackupRecord("1", utc(2026, 1, 1), status="FAILED")]
    plan = plan_retention(backups, DEFAULT_POLICY, UTC_ZONE)
    assert plan.ignore_ids == {"1"} and not plan.keep_ids and not plan.remove_ids


def test_pinned_is_kept_without_tags_and_does_not_shift_representatives() -> None:
    backups = [
        BackupRecord("d1", utc(2026, 1, 1, 12)),
        BackupRecord("d2", utc(2026, 1, 2, 12)),
        BackupRecord("d3-early", utc(2026, 1, 3, 12)),
        BackupRecord("d3-late", utc(2026, 1, 3, 23), pinned=True),  # nearest 23, but pinned
        BackupRecord("d4", utc(2026, 1, 4, 12), pinned=True),
    ]
    plan = plan_retention(backups, only("daily=3"), UTC_ZONE)
    # Pins sit outside the policy: the 3 daily slots go to d3-early, d2 and d1.
    assert kept(plan) == {
        "d4": ((), ("newest", "pinned")),
        "d3-late": ((), ("pinned",)),
        "d3-early": ((DAY,), ("daily",)),
        "d2": ((DAY,), ("daily",)),
        "d1": ((DAY,), ("daily",)),
    }


def test_newest_is_kept_even_when_every_count_is_zero() -> None:
    backups = every(utc(2026, 1, 1), timedelta(hours=7), 10)
    plan = plan_retention(backups, only(""), UTC_ZONE)
    assert kept(plan) == {"9": ((), ("newest",))}
    assert len(plan.remove_ids) == 9


def test_newest_is_kept_when_it_represents_nothing() -> None:
    backups = [BackupRecord("a", utc(2026, 1, 1, 1)), BackupRecord("b", utc(2026, 1, 1, 5))]
    plan = plan_retention(backups, only("daily=1@0"), UTC_ZONE)
    assert kept(plan) == {"b": ((), ("newest",)), "a": ((DAY,), ("daily",))}


def test_equal_times_the_greater_id_is_newer() -> None:
    moment = utc(2026, 1, 1, 12)
    plan = plan_retention(
        [BackupRecord("9", moment), BackupRecord("10", moment)], only("daily=1"), UTC_ZONE
    )
    assert kept(plan) == {"10": ((DAY,), ("daily", "newest"))}  # 10 > 9 as integers
    assert [d.id for d in plan.decisions] == ["10", "9"]

    plan = plan_retention(
        [BackupRecord("b10", moment), BackupRecord("b9", moment)], only("daily=1"), UTC_ZONE
    )
    assert kept(plan) == {"b10": ((DAY,), ("daily", "newest"))}


def test_equal_instants_in_different_offsets_are_equal_times() -> None:
    berlin_noon = datetime(2026, 1, 1, 13, tzinfo=BERLIN)  # 12:00Z
    plan = plan_retention(
        [BackupRecord("2", utc(2026, 1, 1, 12)), BackupRecord("1", berlin_noon)],
        only("daily=1"),
        UTC_ZONE,
    )
    assert kept(plan) == {"2": ((DAY,), ("daily", "newest"))}


def test_fall_back_times_compare_as_instants() -> None:
    # Same zone, folds differ: 02:30 CET (second pass) is after 02:45 CEST.
    first = datetime(2026, 10, 25, 2, 45, tzinfo=BERLIN, fold=0)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1)
    plan = plan_retention([BackupRecord("x", second), BackupRecord("y", first)], only(""), BERLIN)
    assert [d.id for d in plan.decisions] == ["x", "y"]
    assert plan.keep_ids == {"x"}


def test_id_order_is_natural() -> None:
    ids = ["b10", "b9", "10", "9", "a", "007", "7", "b09", "B1", "b"]
    assert sorted(ids, key=id_sort_key) == [
        "007",
        "7",
        "9",
        "10",
        "B1",
        "a",
        "b",
        "b09",
        "b9",
        "b10",
    ]


# --- tiers ---------------------------------------------------------------------------------------


def test_chain_hourly_chooses_among_minutely_representatives() -> None:
    # Minute 59 holds 10:59:05 and 10:59:55; minutely wants second 0, so 10:59:05 represents
    # the minute, and only it competes for the hour (which wants minute 59).
    backups = [
        BackupRecord("a", utc(2026, 1, 1, 10, 58, 0)),
        BackupRecord("b", utc(2026, 1, 1, 10, 59, 5)),
        BackupRecord("c", utc(2026, 1, 1, 10, 59, 55)),
    ]
    plan = plan_retention(backups, only("minutely=0@0 hourly=1"), UTC_ZONE)
    assert kept(plan) == {"c": ((), ("newest",)), "b": ((HOUR,), ("hourly",))}
    assert plan.by_id["a"].action == "remove"


def test_minutely_tier() -> None:
    # Every 20 s from 10:00:00 to 10:02:40: minutely L = second 59 -> the :40s.
    backups = every(utc(2026, 1, 1, 10), timedelta(seconds=20), 9)
    plan = plan_retention(backups, only("minutely=2"), UTC_ZONE)
    assert kept(plan) == {
        "8": ((MIN,), ("minutely", "newest")),  # 10:02:40
        "5": ((MIN,), ("minutely",)),  # 10:01:40
    }
    assert plan.by_id["2"].tags == (MIN,) and plan.by_id["2"].action == "remove"


def test_monthly_reference_past_the_month_end_is_the_last_day() -> None:
    start = utc(2026, 1, 1, 12)
    backups = [
        BackupRecord((start + timedelta(days=i)).date().isoformat(), start + timedelta(days=i))
        for i in range(105)  # to 2026-04-15
    ]
    plan = plan_retention(backups, only("monthly=4@31"), UTC_ZONE)
    assert set(kept(plan)) == {"2026-04-15", "2026-03-31", "2026-02-28", "2026-01-31"}
    plan = plan_retention(backups, only("monthly=4@30"), UTC_ZONE)
    assert set(kept(plan)) == {"2026-04-15", "2026-03-30", "2026-02-28", "2026-01-30"}
    plan = plan_retention(backups, only("monthly=4@1"), UTC_ZONE)
    assert set(kept(plan)) == {"2026-04-15", "2026-04-01", "2026-03-01", "2026-02-01", "2026-01-01"}


def test_weekly_and_yearly_references() -> None:
    start = utc(2026, 1, 1, 12)  # a Thursday
    backups = [
        BackupRecord((start + timedelta(days=i)).date().isoformat(), start + timedelta(days=i))
        for i in range(21)  # to Wed 2026-01-21
    ]
    plan = plan_retention(backups, only("weekly=3@MON"), UTC_ZONE)
    # Weeks: Sun 12-28..Sat 01-03 (Thu 01-01 nearest Monday), 01-04.., 01-11.., 01-18..
    assert set(kept(plan)) == {"2026-01-21", "2026-01-19", "2026-01-12", "2026-01-05"}

    monthly_backups = [
        BackupRecord(f"{y}-{m:02}", utc(y, m, 1)) for y in (2024, 2025, 2026) for m in range(1, 13)
    ]
    plan = plan_retention(monthly_backups, only("yearly=5@6"), UTC_ZONE)
    assert set(kept(plan)) == {"2026-12", "2026-06", "2025-06", "2024-06"}


def test_tags_only_for_tiers_that_keep_something() -> None:
    backups = every(utc(2026, 1, 1), timedelta(hours=1), 30)
    plan = plan_retention(backups, only("hourly=0 daily=2"), UTC_ZONE)
    assert {tag for d in plan.decisions for tag in d.tags} == {DAY}


# --- plumbing ----------------------------------------------------------------------------------


def test_input_order_does_not_matter() -> None:
    backups = every(utc(2026, 1, 1), timedelta(minutes=37), 400)
    backups.append(BackupRecord("tie", backups[-1].time))
    shuffled = backups[:]
    random.Random(7).shuffle(shuffled)
    spec = policy("hourly=5 daily=3@4 weekly=2@WED")
    assert plan_retention(shuffled, spec, BERLIN) == plan_retention(backups, spec, BERLIN)
    assert plan_retention(iter(shuffled), spec, BERLIN) == plan_retention(backups, spec, BERLIN)


def test_decisions_carry_the_input_time() -> None:
    moment = datetime(2026, 1, 1, 13, tzinfo=BERLIN)
    plan = plan_retention([BackupRecord("1", moment)], DEFAULT_POLICY, UTC_ZONE)
    assert plan.decisions[0].time is moment


def test_empty_history() -> None:
    plan = plan_retention([], DEFAULT_POLICY, UTC_ZONE)
    assert plan.decisions == () and plan.keep_ids == frozenset()


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate backup id '1'"):
        plan_retention(
            [BackupRecord("1", utc(2026, 1, 1)), BackupRecord("1", utc(2026, 1, 2))],
            DEFAULT_POLICY,
            UTC_ZONE,
        )


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        BackupRecord("1", datetime(2026, 1, 1))


def test_extreme_dates() -> None:
    late = datetime(9999, 12, 31, 13, tzinfo=UTC)
    backups = [BackupRecord("1", late - timedelta(days=1)), BackupRecord("2", late)]
    plan = plan_retention(backups, only("daily=5"), ZoneInfo("Asia/Kolkata"))  # local 18:30
    assert plan.keep_ids == {"1", "2"}
    with pytest.raises(ValueError, match="no local date"):  # local time would be year 0
        plan_retention(
            [BackupRecord("1", datetime(1, 1, 1, tzinfo=UTC))], DEFAULT_POLICY, SAO_PAULO
        )
