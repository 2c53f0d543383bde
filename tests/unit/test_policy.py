"""Retention policy syntax: parsing, defaults, canonical form and the derived cron."""

from __future__ import annotations

import pytest

from backtor.core.cron import parse_cron
from backtor.core.policy import (
    DEFAULT_POLICY,
    FIELD_BY_TIER,
    PolicyError,
    RetentionPolicy,
    Tier,
    TierRule,
    derive_cron,
    parse_rule,
)


def test_tiers_are_finest_first_with_their_api_fields() -> None:
    assert [t.value for t in Tier] == [
        "minutely",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "yearly",
    ]
    assert [FIELD_BY_TIER[t] for t in Tier] == [
        "retentionMinutely",
        "retentionHourly",
        "retentionDaily",
        "retentionWeekly",
        "retentionMonthly",
        "retentionYearly",
    ]


@pytest.mark.parametrize(
    ("tier", "text", "expected"),
    [
        (Tier.DAILY, "4@3", TierRule(4, 3)),
        (Tier.DAILY, "4", TierRule(4, None)),
        (Tier.DAILY, "4@L", TierRule(4, None)),
        (Tier.DAILY, "4@l", TierRule(4, None)),
        (Tier.DAILY, "  7@23 ", TierRule(7, 23)),
        (Tier.DAILY, "0", TierRule(0, None)),
        (Tier.DAILY, "100000@0", TierRule(100000, 0)),
        (Tier.MINUTELY, "1@59", TierRule(1, 59)),
        (Tier.HOURLY, "6@0", TierRule(6, 0)),
        (Tier.WEEKLY, "4@0", TierRule(4, 0)),
        (Tier.WEEKLY, "4@6", TierRule(4, 6)),
        (Tier.WEEKLY, "4@sun", TierRule(4, 0)),
        (Tier.WEEKLY, "4@Sat", TierRule(4, 6)),
        (Tier.WEEKLY, "4@WED", TierRule(4, 3)),
        (Tier.MONTHLY, "3@1", TierRule(3, 1)),
        (Tier.MONTHLY, "3@31", TierRule(3, 31)),
        (Tier.YEARLY, "2@1", TierRule(2, 1)),
        (Tier.YEARLY, "2@12", TierRule(2, 12)),
    ],
)
def test_parse_rule_accepts(tier: Tier, text: str, expected: TierRule) -> None:
    assert parse_rule(tier, text) == expected


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        (Tier.MINUTELY, TierRule(0, None)),
        (Tier.HOURLY, TierRule(0, None)),
        (Tier.DAILY, TierRule(4, None)),
        (Tier.WEEKLY, TierRule(4, None)),
        (Tier.MONTHLY, TierRule(3, None)),
        (Tier.YEARLY, TierRule(2, None)),
    ],
)
@pytest.mark.parametrize("empty", [None, "", "   "])
def test_empty_rule_is_the_tier_default(tier: Tier, expected: TierRule, empty: str | None) -> None:
    assert parse_rule(tier, empty) == expected


@pytest.mark.parametrize(
    ("tier", "text"),
    [
        (Tier.DAILY, "-1"),
        (Tier.DAILY, "4@"),
        (Tier.DAILY, "@3"),
        (Tier.DAILY, "x"),
        (Tier.DAILY, "4.5"),
        (Tier.DAILY, "4@3.0"),
        (Tier.DAILY, "4 @ 3"),
        (Tier.DAILY, "4@3@3"),
        (Tier.DAILY, "+4"),
        (Tier.DAILY, "100001"),
        (Tier.DAILY, "4@24"),
        (Tier.DAILY, "4@-1"),
        (Tier.DAILY, "4@X"),
        (Tier.DAILY, "4@sun"),
        (Tier.DAILY, "\uff14"),  # a full-width digit
        (Tier.MINUTELY, "1@60"),
        (Tier.HOURLY, "4@60"),
        (Tier.WEEKLY, "4@7"),
        (Tier.WEEKLY, "4@SUNDAY"),
        (Tier.MONTHLY, "4@0"),
        (Tier.MONTHLY, "4@32"),
        (Tier.YEARLY, "2@0"),
        (Tier.YEARLY, "2@13"),
        (Tier.YEARLY, "2@jan"),
    ],
)
def test_parse_rule_rejects(tier: Tier, text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_rule(tier, text)
    error = caught.value
    assert error.field == FIELD_BY_TIER[tier]
    assert str(error) == error.message
    assert FIELD_BY_TIER[tier] in error.message
    assert "N@R" in error.message
    assert repr(text) in error.message


def test_error_names_the_unit_of_the_tier() -> None:
    with pytest.raises(PolicyError, match="the minute, 0-59 or L"):
        parse_rule(Tier.HOURLY, "4@60")
    with pytest.raises(PolicyError, match="the day of the month, 1-31 or L"):
        parse_rule(Tier.MONTHLY, "4@0")
    with pytest.raises(PolicyError, match=r"the weekday, 0-6 \(0 = Sunday\), SUN..SAT or L"):
        parse_rule(Tier.WEEKLY, "4@7")


def test_from_fields_defaults_and_canonical_fields() -> None:
    policy = RetentionPolicy.from_fields(
        {
            "retentionHourly": "6",
            "retentionDaily": "0@3",
            "retentionWeekly": " 0 ",
            "retentionMonthly": "2@L",
            "retentionYearly": None,
        }
    )
    assert policy.rule(Tier.MINUTELY) == TierRule(0, None)
    assert policy.rule(Tier.HOURLY) == TierRule(6, None)
    assert policy.rule(Tier.DAILY) == TierRule(0, 3)
    assert policy.rule(Tier.WEEKLY) == TierRule(0, None)
    assert policy.rule(Tier.MONTHLY) == TierRule(2, None)
    assert policy.rule(Tier.YEARLY) == TierRule(2, None)
    assert policy.to_fields() == {
        "retentionMinutely": "0@L",
        "retentionHourly": "6@L",
        "retentionDaily": "0@3",
        "retentionWeekly": "0@L",
        "retentionMonthly": "2@L",
        "retentionYearly": "2@L",
    }


def test_default_policy() -> None:
    assert RetentionPolicy.from_fields({}) == DEFAULT_POLICY
    assert DEFAULT_POLICY.to_fields() == {
        "retentionMinutely": "0@L",
        "retentionHourly": "0@L",
        "retentionDaily": "4@L",
        "retentionWeekly": "4@L",
        "retentionMonthly": "3@L",
        "retentionYearly": "2@L",
    }
    assert dict(DEFAULT_POLICY.rules) == {t: DEFAULT_POLICY.rule(t) for t in Tier}


def test_weekday_name_is_canonicalised_to_a_digit() -> None:
    policy = RetentionPolicy.from_fields({"retentionWeekly": "4@fri"})
    assert policy.to_fields()["retentionWeekly"] == "4@5"


def test_to_fields_round_trips() -> None:
    policy = RetentionPolicy.from_fields(
        {"retentionMinutely": "1@0", "retentionWeekly": "2@SUN", "retentionMonthly": "3@15"}
    )
    assert RetentionPolicy.from_fields(policy.to_fields()) == policy
    assert hash(policy) == hash(RetentionPolicy.from_fields(policy.to_fields()))


def test_from_fields_rejects_unknown_fields() -> None:
    with pytest.raises(PolicyError) as caught:
        RetentionPolicy.from_fields({"retentionDayly": "4"})
    assert caught.value.field == "retentionDayly"
    assert "unknown retention field" in caught.value.message


def test_from_fields_rejects_non_strings() -> None:
    with pytest.raises(PolicyError) as caught:
        RetentionPolicy.from_fields({"retentionDaily": 4})  # type: ignore[dict-item]
    assert caught.value.field == "retentionDaily"


def test_from_fields_reports_the_bad_field() -> None:
    with pytest.raises(PolicyError) as caught:
        RetentionPolicy.from_fields({"retentionDaily": "4", "retentionWeekly": "4@7"})
    assert caught.value.field == "retentionWeekly"


def test_policies_built_in_code_are_checked_too() -> None:
    with pytest.raises(PolicyError) as caught:
        RetentionPolicy(daily=TierRule(4, 24))
    assert caught.value.field == "retentionDaily"
    with pytest.raises(PolicyError):
        RetentionPolicy(yearly=TierRule(-1, None))


def _policy(spec: str) -> RetentionPolicy:
    """``"daily=0@3 weekly=0"`` -> policy; unnamed tiers take their defaults."""
    pairs = (item.split("=") for item in spec.split())
    return RetentionPolicy.from_fields({f"retention{k.capitalize()}": v for k, v in pairs})


@pytest.mark.parametrize(
    ("spec", "cron"),
    [
        ("", "59 59 23 * * *"),
        ("minutely=5@7 hourly=1@8 daily=1@9", "7 * * * * *"),
        ("minutely=0@7 hourly=24@8", "7 8 * * * *"),
        ("hourly=6 daily=0@3 weekly=0 monthly=2@L yearly=0", "59 59 * * * *"),
        ("minutely=0@0 hourly=0@30 daily=7@2", "0 30 2 * * *"),
        ("daily=0 weekly=4@sun", "59 59 23 * * 0"),
        ("daily=0 weekly=4", "59 59 23 * * 6"),
        ("daily=0 weekly=0 monthly=3", "59 59 23 L * *"),
        ("daily=0@4 weekly=0 monthly=3@15", "59 59 4 15 * *"),
        ("daily=0 weekly=0 monthly=3@28", "59 59 23 28 * *"),
        ("daily=0 weekly=0 monthly=3@29", "59 59 23 29,L * *"),
        ("daily=0 weekly=0 monthly=3@30", "59 59 23 30,L * *"),
        ("daily=0 weekly=0 monthly=3@31", "59 59 23 L * *"),
        ("daily=0 weekly=0 monthly=0", "59 59 23 L 12 *"),
        ("daily=0 weekly=0 monthly=0@1 yearly=2@1", "59 59 23 1 1 *"),
        ("daily=0 weekly=0 monthly=0@30 yearly=2@2", "59 59 23 L 2 *"),
        ("daily=0 weekly=0 monthly=0@29 yearly=2@2", "59 59 23 L 2 *"),
        ("daily=0 weekly=0 monthly=0@28 yearly=2@2", "59 59 23 28 2 *"),
        ("daily=0 weekly=0 monthly=0@31 yearly=2@4", "59 59 23 L 4 *"),
        ("daily=0 weekly=0 monthly=0@30 yearly=2@4", "59 59 23 30 4 *"),
        ("daily=0 weekly=0 monthly=0 yearly=0", "59 59 23 * * *"),
        ("minutely=0@1 hourly=0@2 daily=0@3 weekly=0 monthly=0 yearly=0", "1 2 3 * * *"),
    ],
)
def test_derive_cron(spec: str, cron: str) -> None:
    derived = derive_cron(_policy(spec))
    assert derived == cron
    assert parse_cron(derived).expression == cron  # always a valid, firing schedule


def test_derive_cron_is_valid_for_every_monthly_and_yearly_reference() -> None:
    for month in range(1, 13):
        for day in range(1, 32):
            policy = _policy(f"daily=0 weekly=0 monthly=0@{day} yearly=1@{month}")
            parse_cron(derive_cron(policy))
