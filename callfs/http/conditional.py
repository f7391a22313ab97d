"""Conditional and range requests (API.md §2; RFC 9110 §13, §14): parsing the request headers,
and deciding what they ask for against an entry's validators.

This module knows HTTP, not inodes: an entry is described by its `Validators` (its ETag and its
Last-Modified second), which `callfs.api.shapes.validators` builds. The engine never sees any of
this; it only calls a check the API layer hands it.
"""
import calendar
import re
import time
from dataclasses import dataclass
from typing import NamedTuple

from callfs.domain.errors import PreconditionFailed

MAX_RANGES = 100  # more range specs than this: the Range header is ignored (bounded work)
_MAX_DIGITS = 64  # a position with more significant digits than this: Range is ignored

ANY = "*"  # `If-Match: *` / `If-None-Match: *`


class Validators(NamedTuple):
    """What conditionals compare against. A directory has neither validator but still exists;
    a missing entry is `None` in place of a Validators."""

    etag: str | None  # strong entity tag, quotes included
    modified: int | None  # Last-Modified, whole seconds since the epoch


# -- HTTP-date (RFC 9110 §5.6.7) -----------------------------------------------------------------

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_MON = "|".join(_MONTH_NAMES)
_DAY = "|".join(_DAY_NAMES)
_LONG_DAY = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
# HTTP-date is case-sensitive and has exactly these three shapes.
_IMF_FIXDATE = re.compile(
    rf"(?:{_DAY}), ([0-9]{{2}}) ({_MON}) ([0-9]{{4}}) ([0-9]{{2}}):([0-9]{{2}}):([0-9]{{2}}) GMT")
_RFC850 = re.compile(
    rf"(?:{_LONG_DAY}), ([0-9]{{2}})-({_MON})-([0-9]{{2}}) ([0-9]{{2}}):([0-9]{{2}}):([0-9]{{2}}) GMT")
_ASCTIME = re.compile(
    rf"(?:{_DAY}) ({_MON}) ([0-9]{{2}}| [0-9]) ([0-9]{{2}}):([0-9]{{2}}):([0-9]{{2}}) ([0-9]{{4}})")
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def http_date(seconds: int) -> str:
    """IMF-fixdate, the form a server sends: `Sun, 06 Nov 1994 08:49:37 GMT`."""
    t = time.gmtime(seconds)
    return (f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} "
            f"{t.tm_year:04d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def parse_http_date(value: bytes | str) -> int | None:
    """Seconds since the epoch of an HTTP-date in any of its three forms; None when the value is
    not one (a recipient ignores such a date, RFC 9110 §13.1.3). The day name is not checked
    against the date."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if (m := _IMF_FIXDATE.fullmatch(text)) is not None:
        day, month, year, hour, minute, second = m.groups()
        year = int(year)
    elif (m := _RFC850.fullmatch(text)) is not None:
        day, month, year, hour, minute, second = m.groups()
        # RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is in the past century.
        now = time.gmtime().tm_year
        year = now - now % 100 + int(year)
        if year > now + 50:
            year -= 100
    elif (m := _ASCTIME.fullmatch(text)) is not None:
        month, day, hour, minute, second, year = m.groups()
        year = int(year)
    else:
        return None
    month = _MONTHS[month]
    day, hour, minute, second = int(day), int(hour), int(minute), int(second)
    last_day = 29 if month == 2 and calendar.isleap(year) else _DAYS_IN_MONTH[month - 1]
    if not (1 <= day <= last_day and hour <= 23 and minute <= 59 and second <= 60 and year >= 1):
        return None
    # timegm counts a leap second (60) as the first second of the next minute.
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


# -- entity-tag lists (RFC 9110 §8.8.3, §13.1.1) -------------------------------------------------

# One list member: `W/"…"` or `"…"`, then optional whitespace and a comma or the end. Empty list
# elements (`a, , b`) are allowed by the list rule. Commas inside the quotes belong to the tag.
_TAG = re.compile(r'[ \t,]*(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*(?:,|\Z)')
_LIST_TAIL = re.compile(r"[ \t,]*\Z")


def parse_etags(value: bytes | str):
    """`ANY` for `*`; otherwise a tuple of (weak, tag) pairs, the tag with its quotes. A value
    that is not a valid list yields `()`: nothing matches it."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if text == "*":
        return ANY
    tags = []
    pos = 0
    while (m := _TAG.match(text, pos)) is not None:
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    if _LIST_TAIL.match(text, pos) is None:
        return ()
    return tuple(tags)


def _matches(tags, current: Validators | None, *, strong: bool) -> bool:
    """RFC 9110 §8.8.3.2: strong comparison needs both tags strong; weak ignores `W/`."""
    if current is None:
        return False
    if tags is ANY:
        return True
    etag = current.etag
    if etag is None:
        return False
    for weak, tag in tags:
        if tag == etag and not (strong and weak):
            return True
    return False


# -- the precondition headers --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Preconditions:
    """The four precondition headers of one request, parsed once. `None` means the header is
    absent (or, for a date, unparsable and therefore ignored); an entity-tag list that is
    present but invalid is `()` and matches nothing.

    `check_read` and `check_write` evaluate RFC 9110 §13.2.2 steps 1–4 against the current
    entry (`None` when it does not exist)."""

    if_match: object = None  # None, ANY, or tuple of (weak, tag)
    if_none_match: object = None
    if_modified_since: int | None = None
    if_unmodified_since: int | None = None

    @classmethod
    def from_headers(cls, headers: dict) -> "Preconditions":
        """`headers` maps lower-cased names to raw values, as the protocol delivers them."""
        if_match = headers.get(b"if-match")
        if_none_match = headers.get(b"if-none-match")
        modified = headers.get(b"if-modified-since")
        unmodified = headers.get(b"if-unmodified-since")
        if if_match is None and if_none_match is None and modified is None and unmodified is None:
            return NO_PRECONDITIONS
        return cls(
            None if if_match is None else parse_etags(if_match),
            None if if_none_match is None else parse_etags(if_none_match),
            None if modified is None else parse_http_date(modified),
            None if unmodified is None else parse_http_date(unmodified),
        )

    def __bool__(self) -> bool:
        return not (self.if_match is None and self.if_none_match is None
                    and self.if_modified_since is None and self.if_unmodified_since is None)

    @property
    def guards_write(self) -> bool:
        """Whether any header here can refuse a write (If-Modified-Since cannot)."""
        return not (self.if_match is None and self.if_none_match is None
                    and self.if_unmodified_since is None)

    def check_read(self, current: Validators | None) -> bool:
        """GET/HEAD: True to answer normally, False for `304 Not Modified`; raises
        PreconditionFailed (412) for a failed If-Match / If-Unmodified-Since."""
        return self._evaluate(current, read=True)

    def check_write(self, current: Validators | None) -> None:
        """PUT/DELETE/PATCH (and POST): raises PreconditionFailed when the write must not happen."""
        self._evaluate(current, read=False)

    def _evaluate(self, current: Validators | None, *, read: bool) -> bool:
        if self.if_match is not None:
            if not _matches(self.if_match, current, strong=True):
                raise PreconditionFailed("If-Match does not match the current entity tag")
        elif (self.if_unmodified_since is not None and current is not None
              and current.modified is not None and current.modified > self.if_unmodified_since):
            # Without a modification date (a missing entry, a directory) the header is ignored.
            raise PreconditionFailed("modified since the If-Unmodified-Since date")
        if self.if_none_match is not None:
            if _matches(self.if_none_match, current, strong=False):
                if read:
                    return False
                if self.if_none_match is ANY:
                    raise PreconditionFailed("the entry already exists (If-None-Match: *)")
                raise PreconditionFailed("If-None-Match matches the current entity tag")
        elif (read and self.if_modified_since is not None and current is not None
              and current.modified is not None and current.modified <= self.if_modified_since):
            return False
        return True


NO_PRECONDITIONS = Preconditions()


# -- Range and If-Range (RFC 9110 §14.2, §13.1.5) ------------------------------------------------

class _Unsatisfiable:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE = _Unsatisfiable()  # answer 416
_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")


def _position(digits: str) -> int | None:
    if len(digits.lstrip("0")) > _MAX_DIGITS:
        return None
    return int(digits)


def parse_range(value: bytes | str):
    """The specs of a `Range: bytes=…` value as a tuple of (first, last) pairs: `a-b` → (a, b),
    `a-` → (a, None), `-n` → (None, n). None when the header is to be ignored (RFC 9110 §14.2):
    another unit, bad syntax, last < first, more than MAX_RANGES specs, absurdly long numbers."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    unit, sep, range_set = text.strip(" \t").partition("=")
    if not sep or unit.lower() != "bytes" or range_set.count(",") >= MAX_RANGES:
        return None
    specs = []
    for element in range_set.split(","):
        element = element.strip(" \t")
        if not element:
            continue  # the list rule allows empty elements
        m = _SPEC.fullmatch(element)
        if m is None:
            return None
        first, last, suffix = m.groups()
        if suffix is not None:
            length = _position(suffix)
            if length is None:
                return None
            specs.append((None, length))
            continue
        start = _position(first)
        end = _position(last) if last else None
        if start is None or (last and end is None) or (end is not None and end < start):
            return None
        specs.append((start, end))
    return tuple(specs) if specs else None


def select_range(specs, size: int):
    """What to send of a `size`-byte representation: `(start, end)` inclusive for one `206`,
    UNSATISFIABLE for `416`, None for the whole (`200`). Overlapping and adjacent ranges are
    coalesced; several disjoint ones get the whole representation, which RFC 9110 allows."""
    if specs is None:
        return None
    spans = []
    for first, last in specs:
        if first is None:
            if last == 0 or size == 0:
                continue
            spans.append((max(0, size - last), size - 1))
        elif first < size:
            spans.append((first, size - 1 if last is None or last >= size else last))
    if not spans:
        return UNSATISFIABLE
    spans.sort()
    start, end = spans[0]
    for next_start, next_end in spans[1:]:
        if next_start > end + 1:
            return None
        end = max(end, next_end)
    return start, end


def if_range_matches(value: bytes | str, current: Validators) -> bool:
    """If-Range: the Range applies only when the validator is the current one, compared strongly
    for an entity tag and exactly for a date (RFC 9110 §13.1.5). Anything else: send the whole."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if text.startswith('"'):
        return current.etag is not None and text == current.etag
    if text.startswith("W/"):
        return False
    date = parse_http_date(text)
    return date is not None and current.modified is not None and date == current.modified
