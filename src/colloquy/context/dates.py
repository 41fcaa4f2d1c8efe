"""Dates as search terms: a message's own date, and the relative time expressions it uses.

Why: people ask about when things happened ("What did Tim say on 16 November, 2023?", "What did
I do last weekend?"), and people say when things happened relative to when they speak ("I went
to a support group yesterday"). Neither the question's date nor the answer's date is written in
the answer's words, so keyword and embedding retrieval cannot connect them. This module turns
both sides into the same canonical date tokens, which the recall index matches in a column of
their own:

* a message is indexed with the tokens of the day it was said (its stored timestamp, UTC), and
  with the tokens of every day its relative expressions point to, resolved against that date:
  "yesterday" in a message of 5 December 2023 adds 4 December 2023;
* a question adds the tokens of the absolute dates it names ("4 December", "in 2022",
  "December 2023") and of its own relative expressions, resolved against its own date.

Tokens, for 2023-12-04: ``d20231204`` (the day), ``md1204`` (the day in any year, for "on 4
December"), ``m202312`` (the month), ``mon12`` (the month in any year), ``y2023`` (the year).
A week ("last week") adds its seven days. English only; expressions are matched by rules, not a
model (no extra call). Only the first :data:`MAX_SCAN_CHARS` characters of a text are read: a
pasted document of 1.2 MB took 9 s (and with many dates in it, minutes) to scan, inside the
turn that indexes it, and the rest of such a text is not what a question about a date is after.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime, timedelta, timezone

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
_MONTH_INDEX = {m: i + 1 for i, m in enumerate(MONTHS)}
_MONTH_INDEX.update({m[:3]: i + 1 for i, m in enumerate(MONTHS)})
_MONTH_INDEX["sept"] = 9
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "couple of": 2, "few": 3}

_MON = r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|" \
       r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"((?:19|20)\d\d)"
# "4 December 2023", "4th of December, 2023", "December 4, 2023", "December 4th", "December 2023",
# "in 2022".
_DAY_MONTH = re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MON}\b\.?(?:,?\s+{_YEAR})?", re.I)
_MONTH_DAY = re.compile(rf"\b{_MON}\.?\s+{_DAY}\b(?:,?\s*{_YEAR})?", re.I)
_MONTH_YEAR = re.compile(rf"\b{_MON}\.?,?\s+{_YEAR}\b", re.I)
_MONTH_ALONE = re.compile(rf"\b(?:in|during|since|by|of|last|this|next|early|late|mid)\s+{_MON}\b",
                          re.I)
_YEAR_ALONE = re.compile(rf"\b(?:in|during|since|of|by|from|year)\s+{_YEAR}\b", re.I)
#: What every absolute date above contains (a digit or a month's name): one scan rules most
#: texts out before the six patterns run.
_MAYBE_ABSOLUTE = re.compile(rf"\d|\b{_MON}", re.I)
_ISO = re.compile(r"\b((?:19|20)\d\d)-(\d\d)-(\d\d)\b")

_N = r"(a|an|one|two|three|four|five|six|seven|eight|nine|ten|\d+|a\s+couple\s+of|a\s+few|few)"
_AGO = re.compile(rf"\b{_N}\s+(day|week|month|year)s?\s+ago\b", re.I)
_SIMPLE = re.compile(
    r"\b(yesterday|today|tonight|this morning|this afternoon|this evening|last night|tomorrow|"
    r"the other day|last weekend|this weekend|next weekend|last week|this week|next week|"
    r"last month|this month|next month|last year|this year|next year|recently|lately)\b", re.I)
_WEEKDAY = re.compile(r"\b(last|this|next|on|past)\s+(monday|tuesday|wednesday|thursday|friday|"
                      r"saturday|sunday)\b", re.I)


#: Characters of a text that are scanned for dates (about 2,000 words; see the module docstring).
MAX_SCAN_CHARS = 10_000


def day_tokens(d: date) -> list[str]:
    """The canonical tokens of one day (see the module docstring)."""
    return list(_day_tokens(d))


@functools.lru_cache(maxsize=4096)
def _day_tokens(d: date) -> tuple[str, ...]:
    # Cached: every indexed message asks for the day it was said (strftime is the cost).
    return (f"d{d:%Y%m%d}", f"md{d:%m%d}", f"m{d:%Y%m}", f"mon{d:%m}", f"y{d:%Y}")


def _month_tokens(year: int, month: int) -> list[str]:
    return [f"m{year:04d}{month:02d}", f"mon{month:02d}", f"y{year:04d}"]


def _shift_month(d: date, months: int) -> tuple[int, int]:
    n = d.year * 12 + d.month - 1 + months
    return n // 12, n % 12 + 1


def _week(start: date) -> list[str]:
    return [t for i in range(7) for t in day_tokens(start + timedelta(days=i))]


def utc_date(ts: float) -> date:
    return datetime.fromtimestamp(ts, tz=timezone.utc).date()


def relative_tokens(text: str, ts: float) -> list[str]:
    """Tokens of the days, weeks, months and years that ``text``'s relative expressions point
    to, resolved against ``ts`` (seconds since the epoch, the time the text was said)."""
    if not text:
        return []
    text = text[:MAX_SCAN_CHARS]
    today = utc_date(ts)
    out: list[str] = []
    monday = today - timedelta(days=today.weekday())
    for m in _SIMPLE.finditer(text):
        w = m.group(1).lower()
        if w in {"today", "tonight", "this morning", "this afternoon", "this evening"}:
            out += day_tokens(today)
        elif w in {"yesterday", "last night"}:
            out += day_tokens(today - timedelta(days=1))
        elif w == "tomorrow":
            out += day_tokens(today + timedelta(days=1))
        elif w in {"the other day", "recently", "lately"}:
            out += [t for i in range(1, 4) for t in day_tokens(today - timedelta(days=i))[:1]]
        elif w == "last weekend":
            sat = monday - timedelta(days=2)
            out += day_tokens(sat) + day_tokens(sat + timedelta(days=1))
        elif w == "this weekend":
            sat = monday + timedelta(days=5)
            out += day_tokens(sat) + day_tokens(sat + timedelta(days=1))
        elif w == "next weekend":
            sat = monday + timedelta(days=12)
            out += day_tokens(sat) + day_tokens(sat + timedelta(days=1))
        elif w == "last week":
            out += _week(monday - timedelta(days=7))
        elif w == "this week":
            out += _week(monday)
        elif w == "next week":
            out += _week(monday + timedelta(days=7))
        elif w in {"last month", "this month", "next month"}:
            shift = {"last month": -1, "this month": 0, "next month": 1}[w]
            out += _month_tokens(*_shift_month(today, shift))
        else:  # last/this/next year
            shift = {"last year": -1, "this year": 0, "next year": 1}[w]
            out.append(f"y{today.year + shift:04d}")
    for m in _WEEKDAY.finditer(text):
        which, day = m.group(1).lower(), WEEKDAYS.index(m.group(2).lower())
        back = (today.weekday() - day) % 7
        if which == "next":
            out += day_tokens(today + timedelta(days=(day - today.weekday()) % 7 or 7))
        else:  # last / past / on / this: the most recent such day (a week back if it is today)
            out += day_tokens(today - timedelta(days=back or (7 if which in {"last", "past"} else 0)))
    for m in _AGO.finditer(text):
        raw = re.sub(r"\s+", " ", m.group(1).lower()).removeprefix("a ").strip()
        n = _NUMBERS.get(raw) or _NUMBERS.get(m.group(1).lower()) or (int(raw) if raw.isdigit() else 1)
        unit = m.group(2).lower()
        if unit == "day":
            out += day_tokens(today - timedelta(days=n))
        elif unit == "week":
            out += _week(monday - timedelta(days=7 * n))
        elif unit == "month":
            out += _month_tokens(*_shift_month(today, -n))
        else:
            out.append(f"y{today.year - n:04d}")
    return out


def absolute_tokens(text: str) -> list[str]:
    """Tokens of the absolute dates ``text`` names: "4 December 2023", "December 4", "December
    2023", "in December", "in 2022", "2023-12-04"."""
    text = text[:MAX_SCAN_CHARS]
    if not text or _MAYBE_ABSOLUTE.search(text) is None:
        return []
    out: list[str] = []
    taken = bytearray(len(text))  # 1 where an earlier, more specific pattern matched

    def free(m: re.Match[str]) -> bool:
        return not any(taken[m.start():m.end()])

    def take(span: tuple[int, int]) -> None:
        taken[span[0]:span[1]] = b"\x01" * (span[1] - span[0])

    def day(y: str | None, mon: str, d: str) -> None:
        month = _MONTH_INDEX.get(mon.lower().rstrip("."))
        if month is None or not 1 <= int(d) <= 31:
            return
        out.append(f"md{month:02d}{int(d):02d}")
        if y:
            out.extend([f"d{int(y):04d}{month:02d}{int(d):02d}", f"m{int(y):04d}{month:02d}"])
        out.extend([f"mon{month:02d}"] + ([f"y{y}"] if y else []))

    for m in _ISO.finditer(text):
        try:
            d = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
        out += day_tokens(d)
        take(m.span())
    for m in _DAY_MONTH.finditer(text):
        if free(m):
            day(m.group(3), m.group(2), m.group(1))
            take(m.span())
    for m in _MONTH_DAY.finditer(text):
        if free(m):
            day(m.group(3), m.group(1), m.group(2))
            take(m.span())
    for m in _MONTH_YEAR.finditer(text):
        if free(m):
            month = _MONTH_INDEX.get(m.group(1).lower().rstrip("."))
            if month:
                out += _month_tokens(int(m.group(2)), month)
            take(m.span())
    for m in _MONTH_ALONE.finditer(text):
        if free(m):
            month = _MONTH_INDEX.get(m.group(1).lower().rstrip("."))
            if month and m.group(1).lower() != "may":  # "may" is mostly the verb
                out.append(f"mon{month:02d}")
    for m in _YEAR_ALONE.finditer(text):
        if free(m):
            out.append(f"y{m.group(1)}")
    return out


def message_date_tokens(text: str, ts: float) -> list[str]:
    """Everything a stored message is indexed with: the day it was said, the days its relative
    expressions point to, and the absolute dates it names. Distinct, in order."""
    return list(dict.fromkeys([*day_tokens(utc_date(ts)), *relative_tokens(text, ts),
                               *absolute_tokens(text)]))


def query_date_tokens(text: str, ts: float | None) -> list[str]:
    """The date tokens a question asks about: the absolute dates it names and its relative
    expressions resolved against its own time (``ts``; None: absolute dates only)."""
    toks = absolute_tokens(text) + (relative_tokens(text, ts) if ts is not None else [])
    return list(dict.fromkeys(toks))


__all__ = ["MAX_SCAN_CHARS", "absolute_tokens", "day_tokens", "message_date_tokens", "query_date_tokens",
           "relative_tokens"]
