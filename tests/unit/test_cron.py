"""Cron schedules: seconds first, five-field input, L, DST and rejection of bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtor.core.cron import (
    CronError,
    CronSchedule,
    latest_fire_at_or_before,
    next_fire,
    nominal_period_seconds,
    parse_cron,
)

BERLIN = ZoneInfo("Europe/Berlin")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
UTC_ZONE = ZoneInfo("UTC")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(expression: str, after: datetime, tz: ZoneInfo, count: int) -> list[datetime]:
    schedule = parse_cron(expression)
    result = []
    for _ in range(count):
        after = next_fire(schedule, after, tz)
        result.append(after)
    return result


# --- the seed examples ---------------------------------------------------------------


def test_every_two_seconds_fires_on_even_seconds() -> None:
    got = fires("0/2 * * * * *", utc(2026, 1, 1, 9, 59, 57), UTC_ZONE, 5)
    assert got == [
        utc(2026, 1, 1, 9, 59, 58),
        utc(2026, 1, 1, 10, 0, 0),
        utc(2026, 1, 1, 10, 0, 2),
        utc(2026, 1, 1, 10, 0, 4),
        utc(2026, 1, 1, 10, 0, 6),
    ]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2026, 1, 1, 10, 0, 0), utc(2026, 1, 1, 10, 0, 2)),  # strictly after
        (utc(2026, 1, 1, 10, 0, 1), utc(2026, 1, 1, 10, 0, 2)),
        (datetime(2026, 1, 1, 10, 0, 1, 999999, tzinfo=UTC), utc(2026, 1, 1, 10, 0, 2)),
        (datetime(2026, 1, 1, 10, 0, 2, 1, tzinfo=UTC), utc(2026, 1, 1, 10, 0, 4)),
        (utc(2026, 1, 1, 10, 0, 59), utc(2026, 1, 1, 10, 1, 0)),
    ],
)
def test_every_two_seconds_from_any_moment(after: datetime, expected: datetime) -> None:
    assert next_fire(parse_cron("0/2 * * * * *"), after, UTC_ZONE) == expected


def test_every_four_hours_fires_at_hours_divisible_by_four() -> None:
    got = fires("0 0 */4 ? * *", utc(2026, 1, 1, 0, 0, 0), UTC_ZONE, 7)
    assert got == [
        utc(2026, 1, 1, 4),
        utc(2026, 1, 1, 8),
        utc(2026, 1, 1, 12),
        utc(2026, 1, 1, 16),
        utc(2026, 1, 1, 20),
        utc(2026, 1, 2, 0),
        utc(2026, 1, 2, 4),
    ]
    assert next_fire(parse_cron("0 0 */4 ? * *"), utc(2026, 1, 1, 3, 59, 59), UTC_ZONE) == utc(
        2026, 1, 1, 4
    )


def test_every_four_hours_is_wall_clock_of_the_zone() -> None:
    got = fires("0 0 */4 ? * *", utc(2026, 1, 1, 0, 0, 0), BERLIN, 3)
    assert [g.astimezone(BERLIN).hour for g in got] == [4, 8, 12]
    assert got[0] == utc(2026, 1, 1, 3)  # 04:00 CET
    assert all(g.tzinfo is UTC for g in got)


def test_result_is_utc_whatever_the_zone_of_after() -> None:
    after = datetime(2026, 1, 1, 5, 0, 0, tzinfo=BERLIN)
    got = next_fire(parse_cron("0 0 */4 ? * *"), after, BERLIN)
    assert got == utc(2026, 1, 1, 7) and got.tzinfo is UTC


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("0/2 * * * * *", "0/2 * * * * *"),
        ("  0 0 */4   ?  * * ", "0 0 */4 ? * *"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("30 3 * * mon-fri", "0 30 3 * * MON-FRI"),
        ("0 0 12 l * ?", "0 0 12 L * ?"),
        ("0 0 0 1 jan *", "0 0 0 1 JAN *"),
        ("0 0 0 29 2 *", "0 0 0 29 2 *"),
        ("0 0 0 ? * 2#3", "0 0 0 ? * 2#3"),
        ("0 0 0 15W * ?", "0 0 0 15W * ?"),
        ("0\t0\t0 * * *", "0 0 0 * * *"),
    ],
)
def test_parse_normalises_to_six_fields(text: str, normalised: str) -> None:
    assert parse_cron(text) == CronSchedule(normalised)


def test_five_fields_fire_at_second_zero() -> None:
    got = fires("30 3 * * mon-fri", utc(2026, 1, 2, 12), UTC_ZONE, 3)  # 2026-01-02 is a Friday
    assert got == [utc(2026, 1, 5, 3, 30), utc(2026, 1, 6, 3, 30), utc(2026, 1, 7, 3, 30)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "6 fields"),
        ("x", "6 fields"),
        ("@daily", "6 fields"),
        ("* * * *", "has 4"),
        ("* * * * * * *", "has 7"),
        ("60 * * * * *", "second field '60'"),
        ("* 60 * * * *", "minute field '60'"),
        ("* * 24 * * *", "hour field '24'"),
        ("* * * 32 * *", "day-of-month field '32'"),
        ("* * * 0 * *", "day-of-month field '0'"),
        ("* * * * 13 *", "month field '13'"),
        ("* * * * 0 *", "month field '0'"),
        ("* * * * * 8", "day-of-week field '8'"),
        ("*/0 * * * * *", "second field '*/0'"),
        ("-1 * * * * *", "second field '-1'"),
        ("1,,2 * * * * *", "second field '1,,2'"),
        ("? * * * * *", "second field '?'"),
        ("* * * ?? * *", "day-of-month field '??'"),
        ("* * * * FOO *", "month field 'FOO'"),
        ("a b c d e f", "second field 'A'"),
        ("R * * * * *", "H/R"),
        ("H * * * * *", "H/R"),
        ("0 0 0 1 1 1#6", "day-of-week field '1#6'"),
        ("\u0663 * * * * *", "non-ASCII"),
    ],
)
def test_parse_rejects_malformed(text: str, words: str) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(text)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "text", ["0 0 0 30 2 *", "0 0 0 31 2 *", "0 0 0 31 4,6,9,11 *", "0 0 0 30,31 FEB ?"]
)
def test_parse_rejects_expressions_that_never_fire(text: str) -> None:
    with pytest.raises(CronError, match="never fires"):
        parse_cron(text)


def test_leap_day_is_rare_but_fires() -> None:
    assert fires("0 0 0 29 2 *", utc(2026, 1, 1), UTC_ZONE, 2) == [
        utc(2028, 2, 29),
        utc(2032, 2, 29),
    ]


def test_schedule_constructed_directly_is_validated() -> None:
    assert CronSchedule("0 0 0 * * *").expression == "0 0 0 * * *"
    for bad in ["0 0 * * *", "0 0 0 l * *", "0  0 0 * * *", "0 0 0 30 2 *", "nonsense"]:
        with pytest.raises(CronError):
            CronSchedule(bad)


def test_cron_error_is_a_value_error() -> None:
    assert issubclass(CronError, ValueError)


def test_naive_times_are_refused() -> None:
    schedule = parse_cron("0 0 0 * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(schedule, datetime(2026, 1, 1), UTC_ZONE)
    with pytest.raises(ValueError, match="timezone-aware"):
        latest_fire_at_or_before(schedule, datetime(2026, 1, 1), UTC_ZONE)


# --- L and day-of-week ------------------------------------------------------------------


def test_last_day_of_month() -> None:
    got = fires("0 0 12 L * ?", utc(2028, 1, 1), UTC_ZONE, 5)
    assert got == [
        utc(2028, 1, 31, 12),
        utc(2028, 2, 29, 12),  # leap year
        utc(2028, 3, 31, 12),
        utc(2028, 4, 30, 12),
        utc(2028, 5, 31, 12),
    ]
    assert next_fire(parse_cron("0 0 12 L * ?"), utc(2027, 2, 1), UTC_ZONE) == utc(2027, 2, 28, 12)


def test_weekday_zero_and_seven_are_sunday() -> None:
    after = utc(2026, 1, 1)  # a Thursday
    assert fires("0 0 0 ? * 0", after, UTC_ZONE, 1) == [utc(2026, 1, 4)]
    assert fires("0 0 0 ? * 7", after, UTC_ZONE, 1) == [utc(2026, 1, 4)]
    assert fires("0 0 0 ? * SAT", after, UTC_ZONE, 1) == [utc(2026, 1, 3)]


def test_day_of_month_and_day_of_week_together_mean_either() -> None:
    # Classic cron: both restricted -> a day matching either fires.
    got = fires("0 0 0 15 * MON", utc(2026, 1, 10), UTC_ZONE, 3)
    assert got == [utc(2026, 1, 12), utc(2026, 1, 15), utc(2026, 1, 19)]


# --- DST -----------------------------------------------------------------------------------
# Europe/Berlin 2026: spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC);
# fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC).


def test_berlin_spring_forward_shifts_a_missing_time_to_the_end_of_the_gap() -> None:
    got = fires("0 30 2 * * *", utc(2026, 3, 27, 12), BERLIN, 3)
    assert got == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_berlin_spring_forward_times_in_the_gap_fire_once_together() -> None:
    got = fires("0 */15 * * * *", utc(2026, 3, 29, 0, 30), BERLIN, 4)
    assert got == [
        utc(2026, 3, 29, 0, 45),  # 01:45 CET
        utc(2026, 3, 29, 1, 0),  # 02:00..02:45 do not exist: once, at 03:00 CEST
        utc(2026, 3, 29, 1, 15),  # 03:15 CEST
        utc(2026, 3, 29, 1, 30),
    ]


def test_berlin_fall_back_fires_an_ambiguous_time_once() -> None:
    got = fires("0 30 2 * * *", utc(2026, 10, 24, 12), BERLIN, 2)
    assert got == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first 02:30
        utc(2026, 10, 26, 1, 30),  # next day 02:30 CET; the second 02:30 does not fire
    ]


def test_berlin_fall_back_hourly_skips_the_repeated_hour() -> None:
    got = fires("0 0 * * * *", utc(2026, 10, 24, 23, 30), BERLIN, 3)
    assert got == [
        utc(2026, 10, 25, 0),  # 02:00 CEST
        utc(2026, 10, 25, 2),  # 03:00 CET; 02:00 CET repeats a wall time: no fire
        utc(2026, 10, 25, 3),
    ]


def test_berlin_fall_back_from_inside_the_repeated_hour() -> None:
    schedule = parse_cron("0 0 * * * *")
    inside = utc(2026, 10, 25, 1, 30)  # 02:30 CET, second pass
    assert next_fire(schedule, inside, BERLIN) == utc(2026, 10, 25, 2)
    assert latest_fire_at_or_before(schedule, inside, BERLIN) == utc(2026, 10, 25, 0)


def test_sao_paulo_spring_forward_at_midnight() -> None:
    # 2018-11-04 00:00 -03 -> 01:00 -02 (03:00 UTC): midnight did not exist.
    got = fires("0 0 */4 ? * *", utc(2018, 11, 3, 23, 30), SAO_PAULO, 3)  # 20:30 -03
    assert got == [
        utc(2018, 11, 4, 3),  # 00:00 missing -> 01:00 -02
        utc(2018, 11, 4, 6),  # 04:00 -02
        utc(2018, 11, 4, 10),
    ]


def test_sao_paulo_fall_back_repeats_the_evening_hour() -> None:
    # 2019-02-17 00:00 -02 -> 2019-02-16 23:00 -03 (02:00 UTC): 23:xx happened twice.
    got = fires("0 30 23 * * *", utc(2019, 2, 16, 12), SAO_PAULO, 2)
    assert got == [utc(2019, 2, 17, 1, 30), utc(2019, 2, 18, 2, 30)]


def test_lord_howe_half_hour_shift() -> None:
    # 2026-10-04 02:00 +10:30 -> 02:30 +11 (15:30 UTC on 10-03).
    got = fires("0 15 2 * * *", utc(2026, 10, 2, 12), LORD_HOWE, 3)
    assert got == [
        utc(2026, 10, 2, 15, 45),  # 02:15 +10:30
        utc(2026, 10, 3, 15, 30),  # 02:15 missing -> 02:30 +11
        utc(2026, 10, 4, 15, 15),  # 02:15 +11
    ]


# --- misfires and periods -------------------------------------------------------------------


def test_latest_fire_at_or_before() -> None:
    schedule = parse_cron("0 0 */4 ? * *")
    assert latest_fire_at_or_before(schedule, utc(2026, 1, 1, 4), UTC_ZONE) == utc(2026, 1, 1, 4)
    assert latest_fire_at_or_before(schedule, utc(2026, 1, 1, 7, 59, 59), UTC_ZONE) == utc(
        2026, 1, 1, 4
    )
    moment = datetime(2026, 1, 1, 3, 59, 59, 999999, tzinfo=UTC)
    assert latest_fire_at_or_before(schedule, moment, UTC_ZONE) == utc(2026, 1, 1, 0)


def test_latest_fire_in_the_spring_gap_is_its_end() -> None:
    schedule = parse_cron("0 30 2 * * *")
    assert latest_fire_at_or_before(schedule, utc(2026, 3, 29, 1, 0), BERLIN) == utc(2026, 3, 29, 1)
    assert latest_fire_at_or_before(schedule, utc(2026, 3, 29, 0, 59), BERLIN) == utc(
        2026, 3, 28, 1, 30
    )


@pytest.mark.parametrize(
    ("expression", "tz", "around", "seconds"),
    [
        ("0/2 * * * * *", UTC_ZONE, utc(2026, 1, 1), 2.0),
        ("0 0 */4 ? * *", BERLIN, utc(2026, 1, 1), 4 * 3600.0),
        ("0 30 2 * * *", BERLIN, utc(2026, 3, 29), 86400.0),  # despite the 23-hour day
        ("0 30 2 * * *", BERLIN, utc(2026, 10, 25), 86400.0),  # despite the 25-hour day
        ("0 0 9 ? * MON-FRI", UTC_ZONE, utc(2026, 1, 1), 86400.0),
        ("0 0 0 ? * SUN", UTC_ZONE, utc(2026, 1, 1), 7 * 86400.0),
        ("0 0 0 1 1 ?", UTC_ZONE, utc(2026, 6, 1), 365 * 86400.0),
    ],
)
def test_nominal_period(expression: str, tz: ZoneInfo, around: datetime, seconds: float) -> None:
    assert nominal_period_seconds(parse_cron(expression), tz, around) == seconds


def test_nominal_period_of_a_monthly_schedule_is_about_a_month() -> None:
    period = nominal_period_seconds(parse_cron("0 0 0 L * *"), UTC_ZONE, utc(2026, 1, 15))
    assert 30 * 86400 <= period <= 31 * 86400


def test_next_fire_is_cheap() -> None:
    import time

    schedule = parse_cron("0 0 */4 ? * *")
    after = utc(2026, 1, 1)
    started = time.perf_counter()
    for _ in range(200):
        after = next_fire(schedule, after, BERLIN)
    assert time.perf_counter() - started < 1.0  # ~30 us a call; generous for slow CI


# --- consistency, over zones with DST and odd offsets ----------------------------------------

EXPRESSIONS = [
    "0 0 */4 ? * *",
    "0/2 * * * * *",
    "0 */7 * * * *",
    "0 30 2 * * *",
    "0 0 0 L * ?",
    "15 45 1,2,3 * * *",
    "0 0 0 ? * SUN",
    "0 30 23 * * *",
]
ZONES = [UTC_ZONE, BERLIN, SAO_PAULO, ZoneInfo("Asia/Kolkata"), LORD_HOWE]


# Offset changes of the zones above (UTC), where the interesting cases live.
TRANSITIONS = [
    utc(2026, 3, 29, 1),  # Berlin spring forward
    utc(2026, 10, 25, 1),  # Berlin fall back
    utc(2018, 11, 4, 3),  # Sao Paulo spring forward at midnight
    utc(2019, 2, 17, 2),  # Sao Paulo fall back to 23:00
    utc(2026, 4, 4, 15),  # Lord Howe back half an hour
    utc(2026, 10, 3, 15, 30),  # Lord Howe forward half an hour
]
MOMENTS = st.one_of(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    st.builds(
        lambda base, shift: base + timedelta(microseconds=shift),
        st.sampled_from(TRANSITIONS),
        st.integers(-5 * 3600 * 10**6, 5 * 3600 * 10**6),
    ),
)


@settings(max_examples=300, deadline=None)
@given(expression=st.sampled_from(EXPRESSIONS), tz=st.sampled_from(ZONES), moment=MOMENTS)
def test_next_and_latest_agree(expression: str, tz: ZoneInfo, moment: datetime) -> None:
    schedule = parse_cron(expression)
    following = next_fire(schedule, moment, tz)
    latest = latest_fire_at_or_before(schedule, moment, tz)
    assert following > moment
    assert latest is not None and latest <= moment
    assert next_fire(schedule, latest, tz) == following  # nothing fires in between
    assert latest_fire_at_or_before(schedule, following, tz) == following
    assert latest_fire_at_or_before(schedule, following - timedelta(microseconds=1), tz) == latest
