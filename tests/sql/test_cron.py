"""The cron parser and evaluator in sql/65_cron.sql.

ratchet.cron_parse expands an expression; ratchet.cron_next / ratchet.cron_prev
find firing times in a time zone's wall-clock time. Besides hand-checked cases,
a property test compares cron_next and cron_prev with a brute-force
minute-by-minute reference written here with zoneinfo.

Each test gets a fresh database (see tests/conftest.py), so related checks are
grouped into one test rather than parametrised one database per case.
"""

from __future__ import annotations

import functools
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

Connection = psycopg.Connection[Any]
UTC = timezone.utc
MINUTE = timedelta(minutes=1)
ALL_MINUTES = list(range(60))
ALL_HOURS = list(range(24))
ALL_DOMS = list(range(1, 32))
ALL_MONTHS = list(range(1, 13))
ALL_DOWS = list(range(7))


# ---------------------------------------------------------------- helpers


def utc(text: str) -> datetime:
    """An aware UTC datetime from ISO text without an offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def parse(conn: Connection, expr: str | None) -> dict[str, Any]:
    row = conn.execute("select ratchet.cron_parse(%s) as spec", [expr]).fetchone()
    assert row is not None
    spec: dict[str, Any] = row["spec"]
    return spec


def cron_next(
    conn: Connection, expr: str, after: datetime | None, tz: str | None = "UTC"
) -> datetime:
    row = conn.execute(
        "select ratchet.cron_next(%s, %s::timestamptz, %s) as t", [expr, after, tz]
    ).fetchone()
    assert row is not None
    result: datetime = row["t"]
    return result


def cron_prev(conn: Connection, expr: str, at: datetime | None, tz: str | None = "UTC") -> datetime:
    row = conn.execute(
        "select ratchet.cron_prev(%s, %s::timestamptz, %s) as t", [expr, at, tz]
    ).fetchone()
    assert row is not None
    result: datetime = row["t"]
    return result


def rt005(conn: Connection, sql: str, params: list[Any]) -> psycopg.Error:
    """Run ``sql`` and return the error it must raise, with SQLSTATE RT005."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == "RT005", (sql, params, info.value)
    return info.value


def spec_of(
    minute: list[int] = ALL_MINUTES,
    hour: list[int] = ALL_HOURS,
    dom: list[int] = ALL_DOMS,
    month: list[int] = ALL_MONTHS,
    dow: list[int] = ALL_DOWS,
    dom_star: bool = True,
    dow_star: bool = True,
) -> dict[str, Any]:
    return {
        "minute": minute, "hour": hour, "dom": dom, "month": month, "dow": dow,
        "dom_star": dom_star, "dow_star": dow_star,
    }  # fmt: skip


# ---------------------------------------------------------------- reference


class Reference:
    """Brute-force cron evaluation, minute by minute, in a zoneinfo zone."""

    def __init__(self, spec: dict[str, Any], tz: str) -> None:
        self.zone = ZoneInfo(tz)
        self.minute = set(spec["minute"])
        self.hour = set(spec["hour"])
        self.dom = set(spec["dom"])
        self.month = set(spec["month"])
        self.dow = set(spec["dow"])
        self.day_or = not spec["dom_star"] and not spec["dow_star"]

    def fires(self, t: datetime) -> bool:
        """Whether the schedule fires at UTC minute ``t``."""
        local = t.astimezone(self.zone)
        if local.fold:  # second occurrence of a repeated wall time
            return False
        if local.minute not in self.minute or local.hour not in self.hour:
            return False
        if local.month not in self.month:
            return False
        dom_ok = local.day in self.dom
        dow_ok = local.isoweekday() % 7 in self.dow
        return (dom_ok or dow_ok) if self.day_or else (dom_ok and dow_ok)

    def following(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Firings in (after, until], at most ``limit`` of them."""
        t = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
        found: list[datetime] = []
        while t <= until and len(found) < limit:
            if self.fires(t):
                found.append(t)
            t += MINUTE
        return found

    def latest(self, at: datetime, since: datetime) -> datetime | None:
        """The last firing in [since, at], or None."""
        t = at.astimezone(UTC).replace(second=0, microsecond=0)
        while t >= since:
            if self.fires(t):
                return t
            t -= MINUTE
        return None


# ---------------------------------------------------------------- cron_parse


def test_parse_every_syntax_form(conn: Connection) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("* * * * *", spec_of()),
        ("5 4 3 2 1", spec_of([5], [4], [3], [2], [1], False, False)),
        ("1-5 * * * *", spec_of(minute=[1, 2, 3, 4, 5])),
        ("*/15 */6 * * *", spec_of(minute=[0, 15, 30, 45], hour=[0, 6, 12, 18])),
        ("10-30/10 * * * *", spec_of(minute=[10, 20, 30])),
        ("1-5/10 * * * *", spec_of(minute=[1])),
        ("50/3 * * * *", spec_of(minute=[50, 53, 56, 59])),
        ("30,5,5,1-3 * * * *", spec_of(minute=[1, 2, 3, 5, 30])),
        ("0 0 1,15,28-31 * *", spec_of([0], [0], [1, 15, 28, 29, 30, 31], dom_star=False)),
        ("0 0 */10 * *", spec_of([0], [0], [1, 11, 21, 31], dom_star=False)),
        ("0 0 * */4 *", spec_of([0], [0], month=[1, 5, 9])),
        ("0 0 * * */2", spec_of([0], [0], dow=[0, 2, 4, 6], dow_star=False)),
        ("0 0 * * 1/2", spec_of([0], [0], dow=[1, 3, 5], dow_star=False)),
        ("  0\t12   * *  *  ", spec_of([0], [12])),
        ("00 09 01 01 00", spec_of([0], [9], [1], [1], [0], False, False)),
        ("59 23 31 12 6", spec_of([59], [23], [31], [12], [6], False, False)),
    ]
    for expr, expected in cases:
        assert parse(conn, expr) == expected, expr


def test_parse_names_and_sunday(conn: Connection) -> None:
    def month(expr: str) -> list[int]:
        result: list[int] = parse(conn, f"0 0 * {expr} *")["month"]
        return result

    def dow(expr: str) -> list[int]:
        result: list[int] = parse(conn, f"0 0 * * {expr}")["dow"]
        return result

    assert month("JAN") == [1]
    assert month("jan,Mar-may") == [1, 3, 4, 5]
    assert month("dec") == [12]
    assert month("JAN-DEC/3") == [1, 4, 7, 10]
    assert month("1,FEB") == [1, 2]
    assert dow("MON-FRI") == [1, 2, 3, 4, 5]
    assert dow("sun") == [0]
    assert dow("Sat,SUN") == [0, 6]
    assert dow("7") == [0]
    assert dow("0,7") == [0]
    assert dow("5-7") == [0, 5, 6]
    assert dow("0-7") == [0, 1, 2, 3, 4, 5, 6]
    assert dow("TUE/2") == [2, 4, 6]
    # Names belong to their own field only.
    rt005(conn, "select ratchet.cron_parse(%s)", ["0 0 * MON *"])
    rt005(conn, "select ratchet.cron_parse(%s)", ["0 0 * * JAN"])
    rt005(conn, "select ratchet.cron_parse(%s)", ["0 0 * * SUNDAY"])


def test_parse_star_flags(conn: Connection) -> None:
    flags = {
        "* * * * *": (True, True),
        "* * */1 * */1": (True, True),
        "* * */2 * *": (False, True),
        "* * 1-31 * *": (False, True),
        "* * * * 0-7": (True, False),
        "* * 13 * FRI": (False, False),
    }
    for expr, (dom_star, dow_star) in flags.items():
        spec = parse(conn, expr)
        assert (spec["dom_star"], spec["dow_star"]) == (dom_star, dow_star), expr


def test_parse_macros(conn: Connection) -> None:
    macros = {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }
    for macro, expr in macros.items():
        assert parse(conn, macro) == parse(conn, expr), macro
        assert parse(conn, f" {macro.upper()} ") == parse(conn, expr), macro
    assert cron_next(conn, "@weekly", utc("2024-05-15 10:00")) == utc("2024-05-19 00:00")
    assert cron_next(conn, "@yearly", utc("2024-05-15 10:00")) == utc("2025-01-01 00:00")


def test_parse_rejects_invalid_expressions(conn: Connection) -> None:
    # fmt: off
    bad = [
        None, "", "   ", "* * * *", "* * * * * *", "0 0 * * * 2024",
        "60 * * * *", "-1 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *",
        "* * * 0 *", "* * * 13 *", "* * * * 8", "99999999999 * * * *",
        "*/0 * * * *", "1-10/0 * * * *", "*/61 * * * *", "*/x * * * *", "*/-1 * * * *",
        "5-2 * * * *", "* * * DEC-JAN *", "* * * * SAT-SUN", "* 23-1 * * *",
        "a * * * *", "1,,2 * * * *", "1, * * * *", ",1 * * * *", "1-2-3 * * * *",
        "*-5 * * * *", "1/ * * * *", "/5 * * * *", "1-/2 * * * *", "*/5/2 * * * *",
        "? * * * *", "* * L * *", "* * 15W * *", "* * * * 5#3", "1.5 * * * *",
        "@reboot", "@every 5m", "@", "@daily *", "* * * FOO *", "* * * * MONDAY",
    ]
    # fmt: on
    for expr in bad:
        err = rt005(conn, "select ratchet.cron_parse(%s)", [expr])
        assert err.diag.message_hint, expr
        # cron_next and cron_prev validate the same way.
        rt005(conn, "select ratchet.cron_next(%s, now())", [expr])
        rt005(conn, "select ratchet.cron_prev(%s, now(), 'Europe/Paris')", [expr])


def test_error_messages_name_the_field_and_value(conn: Connection) -> None:
    expected = {
        "61 * * * *": ("minute", "61"),
        "* 25 * * *": ("hour", "25"),
        "* * 0 * *": ("day-of-month", "0"),
        "* * * 13 *": ("month", "13"),
        "* * * * 9": ("day-of-week", "9"),
        "*/0 * * * *": ("minute", "0"),
        "* 9-5 * * *": ("hour", "9-5"),
        "* * * * foo": ("day-of-week", "foo"),
    }
    for expr, (field, value) in expected.items():
        err = rt005(conn, "select ratchet.cron_parse(%s)", [expr])
        message = err.diag.message_primary or ""
        assert field in message and f"'{value}'" in message, message
    err = rt005(conn, "select ratchet.cron_parse(%s)", ["* * *"])
    assert "3 fields" in (err.diag.message_primary or "")


# ---------------------------------------------------------------- cron_next


def test_next_basics(conn: Connection) -> None:
    at = utc("2024-05-15 10:07:30")
    assert cron_next(conn, "* * * * *", at) == utc("2024-05-15 10:08")
    assert cron_next(conn, "*/15 * * * *", at) == utc("2024-05-15 10:15")
    # Strictly after: a firing time itself is not returned.
    assert cron_next(conn, "*/15 * * * *", utc("2024-05-15 10:15")) == utc("2024-05-15 10:30")
    assert cron_next(conn, "*/15 * * * *", utc("2024-05-15 10:14:59.999")) == utc(
        "2024-05-15 10:15"
    )
    assert cron_next(conn, "0 9-17 * * MON-FRI", at) == utc("2024-05-15 11:00")
    assert cron_next(conn, "0 9-17 * * MON-FRI", utc("2024-05-17 17:00")) == utc("2024-05-20 09:00")
    assert cron_next(conn, "30 6 * * 7", at) == utc("2024-05-19 06:30")  # 7 = Sunday
    # The default zone is UTC, and the result does not depend on the session's zone.
    with conn.transaction():
        conn.execute("set local timezone = 'Pacific/Auckland'")
        assert cron_next(conn, "0 0 * * *", at) == utc("2024-05-16 00:00")
        assert cron_next(conn, "0 0 * * *", at, "Asia/Tokyo") == utc("2024-05-15 15:00")
        assert cron_prev(conn, "0 0 * * *", at) == utc("2024-05-15 00:00")


def test_next_month_end_and_year_rollover(conn: Connection) -> None:
    assert cron_next(conn, "0 0 31 * *", utc("2024-04-15 00:00")) == utc("2024-05-31 00:00")
    assert cron_next(conn, "0 0 31 * *", utc("2024-05-31 00:00")) == utc("2024-07-31 00:00")
    assert cron_next(conn, "0 0 30 * *", utc("2024-01-30 12:00")) == utc("2024-03-30 00:00")
    assert cron_next(conn, "0 0 1 * *", utc("2024-12-31 23:59:59")) == utc("2025-01-01 00:00")
    assert cron_next(conn, "59 23 31 12 *", utc("2024-12-31 23:59")) == utc("2025-12-31 23:59")
    assert cron_next(conn, "0 12 * 3 *", utc("2024-03-31 12:00")) == utc("2025-03-01 12:00")
    assert cron_next(conn, "0 0 1 1 *", utc("2024-01-01 00:00")) == utc("2025-01-01 00:00")


def test_next_leap_years(conn: Connection) -> None:
    expr = "0 0 29 2 *"
    assert cron_next(conn, expr, utc("2024-01-01 00:00")) == utc("2024-02-29 00:00")
    assert cron_next(conn, expr, utc("2024-02-29 00:00")) == utc("2028-02-29 00:00")
    # 2100 is not a leap year: the longest gap, eight years.
    assert cron_next(conn, expr, utc("2097-01-01 00:00")) == utc("2104-02-29 00:00")
    assert cron_prev(conn, expr, utc("2103-12-31 00:00")) == utc("2096-02-29 00:00")
    assert cron_next(conn, "0 0 28-31 * *", utc("2023-02-28")) == utc("2023-03-28 00:00")
    assert cron_next(conn, "0 0 28-31 * *", utc("2024-02-28")) == utc("2024-02-29 00:00")


def test_day_of_month_or_day_of_week(conn: Connection) -> None:
    # Both restricted: either matches. 2024-01-01 is a Monday.
    expr = "0 0 1 * MON"
    assert cron_next(conn, expr, utc("2024-01-01 00:00")) == utc("2024-01-08 00:00")
    assert cron_next(conn, expr, utc("2024-01-29 00:00")) == utc("2024-02-01 00:00")  # Thursday
    assert cron_next(conn, "0 0 13 * FRI", utc("2024-09-01")) == utc("2024-09-06 00:00")
    assert cron_next(conn, "0 0 */2 * MON", utc("2024-01-01 00:00")) == utc("2024-01-03 00:00")
    # Day-of-month unrestricted: only the day of week counts.
    assert cron_next(conn, "0 0 * * MON", utc("2024-01-01 00:00")) == utc("2024-01-08 00:00")
    assert cron_next(conn, "0 0 */1 * MON", utc("2024-01-01 00:00")) == utc("2024-01-08 00:00")
    assert cron_next(conn, "0 0 * 2 MON", utc("2024-01-01 00:00")) == utc("2024-02-05 00:00")
    # Day-of-week unrestricted: only the day of month counts.
    assert cron_next(conn, "0 0 13 * *", utc("2024-01-01 00:00")) == utc("2024-01-13 00:00")
    assert cron_next(conn, "0 0 13 * */1", utc("2024-01-01 00:00")) == utc("2024-01-13 00:00")
    # Not "Friday the 13th": any Friday in September, or the 13th.
    assert cron_next(conn, "0 0 13 9 FRI", utc("2024-09-01")) == utc("2024-09-06 00:00")
    assert cron_next(conn, "0 0 13 9 FRI", utc("2025-09-01")) == utc("2025-09-05 00:00")
    assert cron_next(conn, "0 0 13 9 FRI", utc("2025-09-12")) == utc("2025-09-13 00:00")


def test_impossible_expressions_never_fire(conn: Connection) -> None:
    for expr in ["0 0 30 2 *", "0 0 31 2,4,6,9,11 *", "0 0 31 APR *"]:
        err = rt005(conn, "select ratchet.cron_next(%s, now())", [expr])
        assert "never fires" in (err.diag.message_primary or "")
        rt005(conn, "select ratchet.cron_prev(%s, now(), 'America/New_York')", [expr])
    # The OR rule makes these possible after all.
    assert cron_next(conn, "0 0 30 2 MON", utc("2024-01-01 00:00")) == utc("2024-02-05 00:00")
    assert cron_next(conn, "0 0 31 2,3 *", utc("2024-01-01 00:00")) == utc("2024-03-31 00:00")


def test_time_zones(conn: Connection) -> None:
    ny = "America/New_York"
    assert cron_next(conn, "0 9 * * *", utc("2024-01-10 00:00"), ny) == utc("2024-01-10 14:00")
    assert cron_next(conn, "0 9 * * *", utc("2024-07-10 00:00"), ny) == utc("2024-07-10 13:00")
    assert cron_next(conn, "0 9 * * *", utc("2024-07-10 13:00"), ny) == utc("2024-07-11 13:00")
    assert cron_prev(conn, "0 9 * * *", utc("2024-01-10 13:59"), ny) == utc("2024-01-09 14:00")
    # Zone names are matched case-insensitively.
    assert cron_next(conn, "0 9 * * *", utc("2024-01-10 00:00"), "america/new_york") == utc(
        "2024-01-10 14:00"
    )
    # Half- and quarter-hour offsets; the local date differs from the UTC date.
    assert cron_next(conn, "0 0 * * *", utc("2024-05-15 12:00"), "Asia/Kolkata") == utc(
        "2024-05-15 18:30"
    )
    assert cron_next(conn, "0 0 1 * *", utc("2024-05-15 12:00"), "Asia/Kathmandu") == utc(
        "2024-05-31 18:15"
    )
    # Monday in Auckland is still Sunday in UTC.
    assert cron_next(conn, "0 8 * * MON", utc("2024-05-15 00:00"), "Pacific/Auckland") == utc(
        "2024-05-19 20:00"
    )
    for tz in [None, "", "Mars/Olympus_Mons", "foo+3", "EST5EDT4", "UTC|x", "+05:00"]:
        rt005(conn, "select ratchet.cron_next('* * * * *', now(), %s)", [tz])
        rt005(conn, "select ratchet.cron_prev('* * * * *', now(), %s)", [tz])
    for at in [None, "infinity", "-infinity"]:
        rt005(conn, "select ratchet.cron_next('* * * * *', %s::timestamptz)", [at])
        rt005(conn, "select ratchet.cron_prev('* * * * *', %s::timestamptz)", [at])


def test_dst_gap_is_skipped(conn: Connection) -> None:
    # New York, 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    ny = "America/New_York"
    day_before = utc("2024-03-09 12:00")
    assert cron_next(conn, "30 2 * * *", day_before, ny) == utc("2024-03-11 06:30")
    assert cron_prev(conn, "30 2 * * *", utc("2024-03-10 12:00"), ny) == utc("2024-03-09 07:30")
    assert cron_next(conn, "*/15 * * * *", utc("2024-03-10 06:40"), ny) == utc("2024-03-10 06:45")
    assert cron_next(conn, "*/15 * * * *", utc("2024-03-10 06:45"), ny) == utc("2024-03-10 07:00")
    assert cron_prev(conn, "*/15 * * * *", utc("2024-03-10 06:59"), ny) == utc("2024-03-10 06:45")
    assert cron_next(conn, "0 2,3 * * *", day_before, ny) == utc("2024-03-10 07:00")  # 03:00 EDT
    # Santiago springs forward at midnight: 00:00 does not exist on 2024-09-08.
    scl = "America/Santiago"
    assert cron_next(conn, "0 0 * * *", utc("2024-09-07 12:00"), scl) == utc("2024-09-09 03:00")
    assert cron_next(conn, "0 1 * * *", utc("2024-09-07 12:00"), scl) == utc("2024-09-08 04:00")


def test_dst_overlap_fires_once(conn: Connection) -> None:
    # New York, 2024-11-03: 02:00 EDT falls back to 01:00 EST (06:00 UTC).
    ny = "America/New_York"
    assert cron_next(conn, "30 1 * * *", utc("2024-11-03 04:00"), ny) == utc("2024-11-03 05:30")
    assert cron_next(conn, "30 1 * * *", utc("2024-11-03 05:30"), ny) == utc("2024-11-04 06:30")
    assert cron_prev(conn, "30 1 * * *", utc("2024-11-03 06:45"), ny) == utc("2024-11-03 05:30")
    fired = []
    t = utc("2024-11-03 04:45")
    for _ in range(4):
        t = cron_next(conn, "*/30 * * * *", t, ny)
        fired.append(t)
    assert fired == [
        utc("2024-11-03 05:00"),  # 01:00 EDT
        utc("2024-11-03 05:30"),  # 01:30 EDT
        utc("2024-11-03 07:00"),  # 02:00 EST; 01:00 and 01:30 EST are not repeated
        utc("2024-11-03 07:30"),
    ]
    # London, 2024-10-27: 02:00 BST falls back to 01:00 GMT.
    london = "Europe/London"
    assert cron_next(conn, "15 1 27 10 *", utc("2024-10-01"), london) == utc("2024-10-27 00:15")


# ---------------------------------------------------------------- cron_prev


def test_prev(conn: Connection) -> None:
    assert cron_prev(conn, "*/15 * * * *", utc("2024-05-15 10:15")) == utc("2024-05-15 10:15")
    assert cron_prev(conn, "*/15 * * * *", utc("2024-05-15 10:14:59")) == utc("2024-05-15 10:00")
    assert cron_prev(conn, "0 0 1 1 *", utc("2024-06-01 00:00")) == utc("2024-01-01 00:00")
    assert cron_prev(conn, "0 12 31 * *", utc("2024-05-15 00:00")) == utc("2024-03-31 12:00")
    assert cron_prev(conn, "0 0 1 * *", utc("2024-01-01 00:00")) == utc("2024-01-01 00:00")
    assert cron_prev(conn, "0 0 1 * *", utc("2023-12-31 23:59")) == utc("2023-12-01 00:00")
    assert cron_prev(conn, "0 0 1 * MON", utc("2024-01-31 12:00")) == utc("2024-01-29 00:00")
    assert cron_prev(conn, "@hourly", utc("2024-05-15 10:07")) == utc("2024-05-15 10:00")
    assert cron_prev(conn, "0 0 * * 7", utc("2024-05-15 00:00")) == utc("2024-05-12 00:00")
    # prev and next agree: prev(next(t)) = next(t), and next(prev(t)) > t.
    t = utc("2024-05-15 10:07:30")
    for expr in ["*/7 * * * *", "0 0 29 2 *", "0 9 * * MON-FRI", "0 0 1 */3 *"]:
        n = cron_next(conn, expr, t, "Europe/Berlin")
        assert cron_prev(conn, expr, n, "Europe/Berlin") == n
        p = cron_prev(conn, expr, t, "Europe/Berlin")
        assert p <= t < cron_next(conn, expr, p, "Europe/Berlin")


# ---------------------------------------------------------------- property check

PROPERTY_EXPRESSIONS = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0,30 0-3 * * *",
    "*/10 1-3 * * *",
    "15 1 * * *",
    "45 23 * * *",
    "0 0 * * *",
    "59 0,1,2 * * *",
    "5-20/5 */3 * * *",
    "50/4 22-23 * * *",
    "0 9-17 * * MON-FRI",
    "30 8 * * 6,7",
    "0 12 * * SUN",
    "0 0 1 * *",
    "0 0 28-31 * *",
    "0 0 1,15 * *",
    "0 6 1 * MON",
    "0 0 13 * FRI",
    "0 0 */2 * 3",
    "0 0 * JAN,JUL *",
    "0 12 * 3,10,11 0",
    "*/20 1,2,3 * 3,4,9,10,11 *",
    "0 0 29 2 *",
    "17 3 */5 * *",
    "0 2-4 1-7 * 0",
    "@daily",
    "@weekly",
    "@hourly",
]
PROPERTY_ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Santiago",  # DST changes at midnight
    "Pacific/Chatham",  # +12:45 / +13:45
    "Asia/Kolkata",
    "America/Sao_Paulo",
]


@functools.cache
def transitions(tz: str, year: int) -> list[datetime]:
    """The instants (to the hour) in ``year`` when ``tz`` changes its UTC offset."""
    zone = ZoneInfo(tz)
    t = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    found = []
    offset = t.astimezone(zone).utcoffset()
    while t < end:
        t += timedelta(hours=1)
        now = t.astimezone(zone).utcoffset()
        if now != offset:
            found.append(t)
            offset = now
    return found


def test_matches_brute_force_reference(conn: Connection) -> None:
    rng = random.Random(20240310)
    horizon = timedelta(days=2)
    chain = 8
    cases = 0
    for expr in PROPERTY_EXPRESSIONS:
        spec = parse(conn, expr)
        for tz in rng.sample(PROPERTY_ZONES, 3):
            ref = Reference(spec, tz)
            edges = transitions(tz, rng.choice([2024, 2031]))
            for _ in range(2):
                if edges and rng.random() < 0.7:
                    # Close to an offset change, where mistakes would hide.
                    start = rng.choice(edges) + timedelta(seconds=rng.randint(-30 * 3600, 6 * 3600))
                else:
                    start = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(
                        seconds=rng.randint(0, 40 * 365 * 86400)
                    )
                cases += 1
                where = f"{expr!r} in {tz} from {start.isoformat()}"

                # cron_next, chained: the same firings as the reference.
                expected = ref.following(start, start + horizon, chain)
                got: list[datetime] = []
                t = start
                while len(got) < chain:
                    t = cron_next(conn, expr, t, tz)
                    if t > start + horizon:
                        break
                    got.append(t)
                assert got == expected, where

                # cron_prev: the latest firing at or before the start.
                latest = ref.latest(start, start - horizon)
                prev = cron_prev(conn, expr, start, tz)
                if latest is None:
                    assert prev < start - horizon, where
                else:
                    assert prev == latest, where
    assert cases == len(PROPERTY_EXPRESSIONS) * 6


def test_rare_schedules_are_fast(conn: Connection) -> None:
    queries = [
        ("0 0 29 2 *", "2097-01-01 00:00"),  # eight years ahead
        ("0 0 31 12 *", "2024-01-01 00:00"),
        ("59 23 31 DEC SAT", "2024-01-01 00:00"),
        ("* * * * *", "2024-01-01 23:59:30"),
        ("0 0 1 1 MON", "2024-01-01 00:00"),
    ]
    cron_next(conn, "* * * * *", utc("2024-01-01"), "Europe/Paris")  # warm the zone cache
    started = time.perf_counter()
    for expr, at in queries:
        for tz in ["UTC", "Europe/Paris"]:
            cron_next(conn, expr, utc(at), tz)
            cron_prev(conn, expr, utc(at), tz)
    assert time.perf_counter() - started < 1.0
