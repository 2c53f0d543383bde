"""What a verifyCronString fire verifies (backtor.core.verification): the newest unless it was
verified within the period, and a sample of older ones at the documented rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backtor.core.specs import SpecDraft, SpecError, normalise_spec
from backtor.core.verification import (
    MAX_SAMPLE_PER_FIRE,
    Candidate,
    choose,
    next_verify_after,
    sample_size,
)

FIRE = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
PERIOD_START = FIRE - timedelta(days=1)


def daily(count: int, verified: dict[int, datetime] | None = None) -> list[Candidate]:
    """Backups 1..count, one a day, 1 the oldest."""
    verified = verified or {}
    return [
        Candidate(i, FIRE - timedelta(days=count - i, hours=1), verified.get(i))
        for i in range(1, count + 1)
    ]


def pick(candidates: list[Candidate], rate: float = 0.0, fire: datetime = FIRE) -> tuple:
    choice = choose(
        candidates, spec_name="db", fire=fire, period_start=fire - timedelta(days=1), rate=rate
    )
    return choice.newest, choice.sample


def test_nothing_to_choose_from() -> None:
    assert pick([], rate=1.0) == (None, ())


def test_the_newest_never_verified_is_chosen_whatever_the_order_given() -> None:
    backups = daily(3)
    assert pick(backups) == (3, ())
    assert pick(list(reversed(backups))) == (3, ())


def test_the_newest_is_passed_over_when_verified_within_the_period() -> None:
    recent = daily(3, {3: PERIOD_START + timedelta(minutes=5)})
    assert pick(recent) == (None, ())
    # A verdict before the period began (FAILED ones too: any verdict) is not recent.
    stale = daily(3, {3: PERIOD_START - timedelta(seconds=1)})
    assert pick(stale) == (3, ())


def test_the_newest_with_a_verification_under_way_is_passed_over() -> None:
    backups = daily(2)
    backups[-1] = Candidate(2, backups[-1].scheduled_at, None, verifying=True)
    assert pick(backups) == (None, ())


def test_without_a_previous_fire_any_verdict_counts_as_recent() -> None:
    backups = daily(1, {1: FIRE - timedelta(days=400)})
    choice = choose(backups, spec_name="db", fire=FIRE, period_start=None, rate=0.0)
    assert choice.newest is None


def test_ties_on_the_scheduled_time_go_to_the_greater_id() -> None:
    moment = FIRE - timedelta(hours=2)
    backups = [Candidate(7, moment, None), Candidate(9, moment, None), Candidate(8, moment, None)]
    assert pick(backups)[0] == 9


@pytest.mark.parametrize(
    ("rate", "older", "expected"),
    [
        (0.0, 10, 0),
        (0.1, 10, 1),
        (0.3, 10, 3),  # 0.3 as written, not 0.30000000000000004
        (0.25, 10, 3),  # ceil(2.5)
        (0.01, 3, 1),  # any rate above 0 verifies at least one
        (1.0, 5, 5),
        (1.0, 0, 0),
        (0.5, 1000, MAX_SAMPLE_PER_FIRE),
    ],
)
def test_the_sample_size_is_ceil_of_rate_times_the_older_ones(
    rate: float, older: int, expected: int
) -> None:
    assert sample_size(rate, older) == expected


def test_the_sample_prefers_never_verified_then_least_recently_verified() -> None:
    # 1..6 older, 7 the newest; 2 and 4 never verified, the rest at different times.
    verified = {
        1: FIRE - timedelta(days=3),
        3: FIRE - timedelta(days=9),
        5: FIRE - timedelta(days=5),
        6: FIRE - timedelta(days=1, hours=2),
    }
    newest, sample = pick(daily(7, verified), rate=4 / 6)
    assert newest == 7
    assert set(sample[:2]) == {2, 4}
    assert sample[2:] == (3, 5)


def test_the_sample_never_takes_the_newest_nor_one_being_verified() -> None:
    backups = daily(5)
    backups[0] = Candidate(1, backups[0].scheduled_at, None, verifying=True)
    newest, sample = pick(backups, rate=1.0)
    assert newest == 5
    assert sorted(sample) == [2, 3, 4]  # 4 wanted (rate 1 of 4 older), 1 is under way


def test_the_draw_among_equals_is_deterministic_and_changes_with_the_fire() -> None:
    backups = daily(41)
    first = pick(backups, rate=0.1)[1]
    assert first == pick(list(reversed(backups)), rate=0.1)[1]  # same fire, same draw
    assert len(first) == 4
    draws = {pick(backups, rate=0.1, fire=FIRE + timedelta(days=d))[1] for d in range(10)}
    assert len(draws) > 5  # a different sample at other fires
    other_spec = choose(backups, spec_name="other", fire=FIRE, period_start=None, rate=0.1)
    assert other_spec.sample != first


def test_a_rate_covers_every_older_backup_within_ceil_one_over_rate_fires() -> None:
    """Older backups verified at each fire get the fire's checkedAt: all of 10 are verified
    once in 5 fires at rate 0.2 (and none twice)."""
    verified: dict[int, datetime] = {11: FIRE}  # the newest, verified: the sample alone
    seen: list[int] = []
    for n in range(5):
        fire = FIRE + timedelta(days=n)
        _, sample = pick(daily(11, verified), rate=0.2, fire=fire)
        assert len(sample) == 2
        seen += sample
        verified |= {backup_id: fire for backup_id in sample}
    assert sorted(seen) == list(range(1, 11))


def test_the_next_verify_time_follows_the_cron_in_the_spec_zone() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert next_verify_after(
        name="db", cron_string="0 0 3 * * *", timezone="Europe/Berlin", jitter_seconds=0, now=now
    ) == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    assert (
        next_verify_after(name="db", cron_string=None, timezone="UTC", jitter_seconds=0, now=now)
        is None
    )


def test_the_spec_fields_are_validated_naming_them() -> None:
    values = normalise_spec(SpecDraft(name="db", verify_cron_string="0 3 * * *"))
    assert values.verify_cron_string == "0 0 3 * * *" and values.verify_sample_rate is None
    for blank in ("", "  "):
        assert (
            normalise_spec(SpecDraft(name="db", verify_cron_string=blank)).verify_cron_string
            is None
        )
    with pytest.raises(SpecError) as bad_cron:
        normalise_spec(SpecDraft(name="db", verify_cron_string="61 * * * *"))
    assert bad_cron.value.field == "verifyCronString"
    for rate in (-0.1, 1.01, float("nan"), float("inf")):
        with pytest.raises(SpecError) as bad_rate:
            normalise_spec(SpecDraft(name="db", verify_sample_rate=rate))
        assert bad_rate.value.field == "verifySampleRate"
    assert normalise_spec(SpecDraft(name="db", verify_sample_rate=1)).verify_sample_rate == 1.0
