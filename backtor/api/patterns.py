"""JSON Schema patterns for the API's strings, built from the rules backtor.core applies.

Each pattern says exactly what the server accepts (the rule lives in core; this only spells
it as a regex), so a client generated from /openapi.json sends nothing the server refuses
for its syntax. They read the same in ECMA 262 (JSON Schema validators, JavaScript; a
search) and in Python's `re.fullmatch`: no `\\s` (the two disagree on it), no flags.
"""

from __future__ import annotations

from collections.abc import Iterable
from zoneinfo import available_timezones

from backtor.core.policy import MAX_COUNT, MAX_DURATION_DIGITS, UNIT_BY_TIER, WEEKDAY_NAMES, Tier
from backtor.core.specs import NAME_PATTERN

# Longest retention text the API takes: far past any real rule ("100000@L" is 8), short
# enough that no number in it is ever too long to convert.
MAX_RETENTION_CHARS = 64
BACKUP_ID_PATTERN = "^[0-9]+$"
NAME = f"^{NAME_PATTERN}$"
NAME_RULE = "1-128 letters, digits, '.', '_', '-', starting with a letter or digit"
# workerConfig: anything but NUL (PostgreSQL text cannot hold it).
NO_NUL = "^[^\\u0000]*$"


def _whitespace_class() -> str:
    """The characters str.strip() removes, as a regex class: the server strips exactly these."""
    spaces = [c for c in map(chr, range(0x10000)) if c.isspace()]
    ranges: list[tuple[int, int]] = []
    for code in map(ord, spaces):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    parts = (
        f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges
    )
    return "[" + "".join(parts) + "]"


WHITESPACE = _whitespace_class()


def any_case(word: str) -> str:
    """`run` -> `[Rr][Uu][Nn]`: a case-insensitive word without the `i` flag."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def one_of_any_case(words: Iterable[str]) -> str:
    """A whole value that is one of `words`, in any (ASCII) case."""
    return "^(?:" + "|".join(any_case(w) for w in words) + ")$"


def _number(low: int, high: int) -> str:
    """Decimal numbers low..high, leading zeros allowed (the server reads them with int())."""
    if high - low <= 100:
        values = "|".join(str(n) for n in range(high, low - 1, -1))  # longest first
        return f"0*(?:{values})"
    digits = len(str(high)) - 1
    # A power of ten, like MAX_COUNT: every number of fewer digits, or the power itself.
    assert low == 0 and high == 10**digits, "only 0..10**k spans are spelled this way"
    return f"0*(?:{high}|[0-9]{{1,{digits}}})"


def retention(tier: Tier) -> str:
    """A tier's rule: empty (the default), 'N' or 'N@R', R in the tier's unit or L."""
    unit = UNIT_BY_TIER[tier]
    references = [_number(unit.low, unit.high), "[Ll]"]
    if tier is Tier.WEEKLY:
        references += [any_case(day) for day in WEEKDAY_NAMES]
    rule = f"{_number(0, MAX_COUNT)}(?:@(?:{'|'.join(references)}))?"
    return f"^{WHITESPACE}*(?:{rule})?{WHITESPACE}*$"


def _keep_within() -> str:
    """retentionKeepWithin: empty (off) or units w, d, h, m, s in that order, any case."""
    parts = "".join(
        f"(?:[0-9]{{1,{MAX_DURATION_DIGITS}}}[{unit}{unit.upper()}])?" for unit in "wdhms"
    )
    return f"^{WHITESPACE}*{parts}{WHITESPACE}*$"


KEEP_WITHIN = _keep_within()


# -- cron: the documented syntax, a part of croniter's that never fails its field checks ---

_STEP = "(?:0?[1-9]|[1-9][0-9])"  # 1..99
_SECOND = "[0-5]?[0-9]"
_HOUR = "(?:[01]?[0-9]|2[0-3])"
_DAY = "(?:0?[1-9]|[12][0-9]|3[01])"
_MONTH = "(?:0?[1-9]|1[0-2])"
_WEEKDAY = "0?[0-7]"
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def _items(value: str, *extra: str) -> str:
    """A comma list of `*`, a value or a range, each with an optional /step, or `extra`."""
    item = f"(?:\\*|{value}(?:-{value})?)(?:/{_STEP})?"
    if extra:
        item = f"(?:{item}|{'|'.join(extra)})"
    return f"{item}(?:,{item})*"


def _names(names: Iterable[str]) -> str:
    return "(?:" + "|".join(any_case(n) for n in names) + ")"


def _cron() -> str:
    month = f"(?:{_MONTH}|{_names(MONTH_NAMES)})"
    weekday = f"(?:{_WEEKDAY}|{_names(WEEKDAY_NAMES)})"
    second = _items(_SECOND)
    hour = _items(_HOUR)
    any_day = "(?:\\*|\\?)"
    days = f"(?:{_DAY}[Ww]|{_items(_DAY, '[Ll]')})"
    months = _items(month)
    # croniter refuses literal weekdays beside nth ones ("1,MON#2"): one kind per list.
    nth = f"(?:{weekday}#[1-5]|[Ll][0-7]|\\*)"
    weekdays = f"(?:{_items(weekday)}|{nth}(?:,{nth})*)"
    gap = f"{WHITESPACE}+"
    # Day of month or day of week, not both: croniter ANDs some pairs ("10W" and "0#1")
    # into schedules that never fire.
    calendar = f"(?:{days}{gap}{months}{gap}{any_day}|{any_day}{gap}{months}{gap}{weekdays})"
    six_or_five = f"(?:{second}{gap})?{second}{gap}{hour}{gap}{calendar}"
    return f"^{WHITESPACE}*(?:{six_or_five})?{WHITESPACE}*$"


# Minus two: a five-field cron gains "0 " in front when it is normalised to six fields.
MAX_CRON_INPUT_CHARS = 254
CRON = _cron()
CRON_RULE = (
    "six fields, second minute hour day-of-month month day-of-week, or five (minute first; "
    "the second is then 0), separated by whitespace. Each field is `*`, a value, a range "
    "`a-b` or either with a step `/n` (n 1-99), or a comma list of these; seconds and "
    "minutes 0-59, hours 0-23, days 1-31 (also `L` for the last, `nW` alone for the "
    "weekday nearest day n), months 1-12 or JAN-DEC, weekdays 0-7 (0 and 7 are Sunday) or "
    "SUN-SAT (or a list of `d#k`, the k-th d of the month, and `Ld`, the last d). Day of "
    "month and day of week: one of them is `*` or `?`. Names and letters in any case"
)


def timezone_names() -> list[str]:
    """The IANA zones the server knows (tzdata of this machine), sorted: the `timezone` enum."""
    return sorted(available_timezones())
