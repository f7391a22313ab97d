"""Conditional and range request parsing (callfs.http.conditional; RFC 9110 §5.6.7, §8.8.3, §13,
§14). The Range evaluation is checked against a plain oracle that works on sets of byte indices."""
import email.utils
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callfs.api.shapes import cache_headers, etag, validators
from callfs.domain.errors import PreconditionFailed
from callfs.domain.model import DIRECTORY, FILE, Inode
from callfs.http.conditional import (ANY, MAX_RANGES, NO_PRECONDITIONS, UNSATISFIABLE,
                                     Preconditions, Validators, http_date, if_range_matches,
                                     parse_etags, parse_http_date, parse_range, select_range)

SUNDAY = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example)


def byte_range(value, size):
    return select_range(parse_range(value), size)


# -- Range ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, specs", [
    (b"bytes=0-499", ((0, 499),)),
    (b"bytes=500-", ((500, None),)),
    (b"bytes=-500", ((None, 500),)),
    (b"bytes=0-0,-1", ((0, 0), (None, 1))),
    (b"bytes=5-5", ((5, 5),)),
    (b"Bytes=1-2", ((1, 2),)),
    (b"BYTES=1-2", ((1, 2),)),
    (b"  bytes=1-2  ", ((1, 2),)),
    (b"bytes=1-2 , 4-5", ((1, 2), (4, 5))),
    (b"bytes=1-2,\t4-5", ((1, 2), (4, 5))),
    (b"bytes=,1-2,,", ((1, 2),)),  # empty list elements are allowed
    (b"bytes=007-0010", ((7, 10),)),
    (b"bytes=-0", ((None, 0),)),
    (b"bytes=0-99999999999999999999999999", ((0, 10 ** 26 - 1),)),
    (b"bytes=" + b"0" * 200 + b"5-", ((5, None),)),  # leading zeros are not significant
])
def test_range_forms(value, specs):
    assert parse_range(value) == specs
    assert parse_range(value.decode()) == specs


@pytest.mark.parametrize("value", [
    b"", b"bytes", b"bytes=", b"bytes=,", b"bytes= ", b"items=0-1", b"bytes =0-1",
    b"bytes=-", b"bytes=--1", b"bytes=+1-2", b"bytes=1-+2", b"bytes=5-2", b"bytes=1-2-3",
    b"bytes=a-b", b"bytes=1-2;x", b"bytes=0x10-", b"bytes=1 -2", b"bytes=1- 2", b"bytes=1-2,x",
    b"bytes=1-2,5-3", b"bytes=1.5-2", "bytes=\u0661-2".encode(), b"bytes=\xb2-3",
    b"bytes=0-1\r\n", b"bytes=0-1 bytes=2-3",
    b"bytes=" + b"9" * 65 + b"-",  # an absurdly long position: ignored, not computed
    b"bytes=0-" + b"9" * 65,
    b"bytes=-" + b"9" * 65,
    b"bytes=99999999999999999999999-88888888888888888888888",  # last < first, both huge
])
def test_range_garbage_is_ignored(value):
    assert parse_range(value) is None
    assert byte_range(value, 1000) is None


def test_range_long_positions_up_to_the_limit_are_exact():
    assert parse_range(b"bytes=" + b"9" * 64 + b"-") == ((10 ** 64 - 1, None),)
    assert byte_range(b"bytes=" + b"9" * 64 + b"-", 10) is UNSATISFIABLE
    assert byte_range(b"bytes=-" + b"9" * 64, 10) == (0, 9)
    assert byte_range(b"bytes=3-" + b"9" * 64, 10) == (3, 9)


def test_many_ranges_are_bounded():
    hundred = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10 + 1) for i in range(MAX_RANGES))
    assert len(parse_range(hundred)) == MAX_RANGES
    more = hundred + b",2000-2001"
    assert parse_range(more) is None
    # Coalescing ones still collapse into one range while within the limit.
    adjacent = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(MAX_RANGES))
    assert byte_range(adjacent, 1000) == (0, MAX_RANGES - 1)
    # A huge header is refused before it is split.
    assert parse_range(b"bytes=" + b"0-1," * 100_000) is None


@pytest.mark.parametrize("value, size, chosen", [
    (b"bytes=0-499", 1000, (0, 499)),
    (b"bytes=500-999", 1000, (500, 999)),
    (b"bytes=500-", 1000, (500, 999)),
    (b"bytes=-500", 1000, (500, 999)),
    (b"bytes=-5000", 1000, (0, 999)),
    (b"bytes=900-5000", 1000, (900, 999)),
    (b"bytes=999-999", 1000, (999, 999)),
    (b"bytes=0-", 1, (0, 0)),
    (b"bytes=1000-", 1000, UNSATISFIABLE),
    (b"bytes=1000-2000", 1000, UNSATISFIABLE),
    (b"bytes=-0", 1000, UNSATISFIABLE),
    (b"bytes=0-", 0, UNSATISFIABLE),
    (b"bytes=0-0", 0, UNSATISFIABLE),
    (b"bytes=-1", 0, UNSATISFIABLE),
    (b"bytes=2000-,-0", 1000, UNSATISFIABLE),
    (b"bytes=2000-,0-1", 1000, (0, 1)),  # one satisfiable spec is enough
    (b"bytes=0-9,10-19", 1000, (0, 19)),  # adjacent: coalesced
    (b"bytes=10-19,0-9", 1000, (0, 19)),
    (b"bytes=0-9,5-30", 1000, (0, 30)),  # overlapping
    (b"bytes=50-60,0-9,5-49", 1000, (0, 60)),
    (b"bytes=0-9,-10", 20, (0, 19)),
    (b"bytes=0-9,20-29", 1000, None),  # disjoint: the whole representation
    (b"bytes=0-0,-1", 1000, None),
    (b"bytes=0-0,-1", 2, (0, 1)),
])
def test_select_range(value, size, chosen):
    assert byte_range(value, size) == chosen


def oracle(specs, size):
    """The answer from first principles: each spec as the set of byte indices it selects."""
    selected = set()
    for first, last in specs:
        if first is None:
            indices = range(max(0, size - last), size) if last > 0 else range(0)
        else:
            if last is not None and last < first:
                return None  # an invalid range-set: Range is ignored
            indices = range(first, size if last is None else min(last + 1, size))
        selected.update(indices)
    if not selected:
        return UNSATISFIABLE
    start, end = min(selected), max(selected)
    if len(selected) != end - start + 1:
        return None  # several disjoint parts: the whole
    return start, end


position = st.integers(min_value=0, max_value=120) | st.integers(min_value=0, max_value=10 ** 30)
spec = st.one_of(
    st.tuples(position, position),
    st.tuples(position, st.none()),
    st.tuples(st.none(), position),
)
space = st.sampled_from(["", " ", "\t", "  "])


def render(specs, draw_space) -> str:
    parts = []
    for first, last in specs:
        text = (f"-{last}" if first is None else f"{first}-" if last is None else f"{first}-{last}")
        parts.append(draw_space() + text + draw_space())
    return "bytes=" + ",".join(parts)


@settings(max_examples=500, deadline=None)
@given(st.lists(spec, min_size=1, max_size=8), st.integers(min_value=0, max_value=100), st.data())
def test_range_matches_oracle(specs, size, data):
    value = render(specs, lambda: data.draw(space))
    expected = oracle(specs, size)
    got = byte_range(value.encode(), size)
    assert got == expected, (value, size)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=0, max_value=50))
def test_range_never_fails_on_noise(value, size):
    got = byte_range(b"bytes=" + value, size)
    assert got is None or got is UNSATISFIABLE or (0 <= got[0] <= got[1] < size)


# -- entity-tag lists ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, parsed", [
    (b'"abc"', ((False, '"abc"'),)),
    (b'W/"abc"', ((True, '"abc"'),)),
    (b'"a", W/"b" ,"c"', ((False, '"a"'), (True, '"b"'), (False, '"c"'))),
    (b'"a,b"', ((False, '"a,b"'),)),  # a comma inside the quotes belongs to the tag
    (b'"a,b", "c"', ((False, '"a,b"'), (False, '"c"'))),
    (b'""', ((False, '""'),)),
    (b'  "a"  ', ((False, '"a"'),)),
    (b'"a",,"b",', ((False, '"a"'), (False, '"b"'))),
    (b'"\x80\xff"', ((False, '"\x80\xff"'),)),  # obs-text
    (b"*", ANY),
    (b" * ", ANY),
])
def test_etag_lists(value, parsed):
    assert parse_etags(value) == parsed


@pytest.mark.parametrize("value", [
    b"", b",", b"abc", b'"abc', b'abc"', b'"a" "b"', b'"a"x', b'w/"a"', b'W/ "a"', b'W/a',
    b'*, "a"', b'"a", *', b"**", b'"a b"', b'"a\x01"', b'"a\x7f"', b'"a"b"',
])
def test_invalid_etag_lists_match_nothing(value):
    assert parse_etags(value) == ()


etagc = st.text(alphabet=st.sampled_from(
    [chr(c) for c in range(0x21, 0x7f) if c != 0x22] + [chr(c) for c in range(0x80, 0x100)]),
    max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), etagc), min_size=1, max_size=6), st.data())
def test_etag_list_round_trip(tags, data):
    """Any list a client can write parses back to its tags, whatever the separators."""
    separator = data.draw(st.sampled_from([",", ", ", " ,", " , ", ",,", ",\t"]))
    text = separator.join(("W/" if weak else "") + f'"{opaque}"' for weak, opaque in tags)
    expected = tuple((weak, f'"{opaque}"') for weak, opaque in tags)
    assert parse_etags(text.encode("latin-1")) == expected


# -- HTTP-date -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    b"Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
    b"Sun Nov  6 08:49:37 1994",  # asctime
    b"  Sun, 06 Nov 1994 08:49:37 GMT ",
    "Sun, 06 Nov 1994 08:49:37 GMT",
])
def test_http_date_forms(value):
    assert parse_http_date(value) == SUNDAY


@pytest.mark.parametrize("value", [
    b"", b"yesterday", b"784111777", b"sun, 06 Nov 1994 08:49:37 GMT", b"Sun, 06 nov 1994 08:49:37 GMT",
    b"Sun, 06 Nov 1994 08:49:37 gmt", b"Sun, 06 Nov 1994 08:49:37", b"Sun, 06 Nov 1994 08:49:37 UTC",
    b"Sun, 6 Nov 1994 08:49:37 GMT", b"Sun, 06 Nov 94 08:49:37 GMT", b"Sunday, 06 Nov 1994 08:49:37 GMT",
    b"Sun, 06-Nov-94 08:49:37 GMT", b"Sun Nov 6 08:49:37 1994", b"Sun, 30 Feb 1994 08:49:37 GMT",
    b"Sun, 31 Apr 1994 08:49:37 GMT", b"Sun, 00 Nov 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 24:00:00 GMT",
    b"Sun, 06 Nov 1994 08:60:00 GMT", b"Sun, 06 Nov 1994 08:49:61 GMT", b"Sun, 06 Nov 0000 08:49:37 GMT",
    b"1994-11-06T08:49:37Z", b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
    "Sun, \u06606 Nov 1994 08:49:37 GMT".encode(),
])
def test_invalid_http_dates(value):
    assert parse_http_date(value) is None


def test_http_date_edges():
    assert parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT") == 0
    assert parse_http_date(b"Thu, 29 Feb 2024 12:00:00 GMT") == 1709208000
    assert parse_http_date(b"Thu, 29 Feb 2023 12:00:00 GMT") is None
    # A leap second counts as the first second of the next minute.
    assert parse_http_date(b"Sat, 31 Dec 2016 23:59:60 GMT") == 1483228800
    assert parse_http_date(b"Thu Jan  1 00:00:00 1970") == 0
    assert parse_http_date(b"Mon Dec 31 23:59:59 2029") == 1893455999


def test_rfc850_two_digit_years():
    this_year = time.gmtime().tm_year
    near = (this_year + 10) % 100
    far = (this_year + 60) % 100
    near_date = parse_http_date(f"Monday, 01-Jan-{near:02d} 00:00:00 GMT")
    far_date = parse_http_date(f"Monday, 01-Jan-{far:02d} 00:00:00 GMT")
    assert time.gmtime(near_date).tm_year == this_year + 10
    assert time.gmtime(far_date).tm_year == this_year + 60 - 100


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31
def test_http_date_round_trip(seconds):
    text = http_date(seconds)
    assert text == email.utils.formatdate(seconds, usegmt=True)
    assert parse_http_date(text) == seconds
    asctime = time.strftime("%a %b ", time.gmtime(seconds)) + "%2d" % time.gmtime(seconds).tm_mday \
        + time.strftime(" %H:%M:%S %Y", time.gmtime(seconds))
    assert parse_http_date(asctime) == seconds


# -- preconditions -------------------------------------------------------------------------------

CURRENT = Validators('"1-2-3"', SUNDAY)
DIRECTORY_VALIDATORS = Validators(None, None)


def conditions(**headers) -> Preconditions:
    return Preconditions.from_headers(
        {name.replace("_", "-").encode(): value.encode() for name, value in headers.items()})


def outcome(pre: Preconditions, current, read: bool):
    """'ok', '304' or '412'."""
    try:
        if read:
            return "ok" if pre.check_read(current) else "304"
        pre.check_write(current)
        return "ok"
    except PreconditionFailed:
        return "412"


def test_no_headers_is_the_shared_empty_object():
    pre = Preconditions.from_headers({b"range": b"bytes=0-1", b"if-range": b'"x"'})
    assert pre is NO_PRECONDITIONS
    assert not pre and not pre.guards_write
    assert outcome(pre, CURRENT, True) == "ok" and outcome(pre, None, False) == "ok"


def test_preconditions_are_immutable():
    pre = conditions(if_match='"a"')
    with pytest.raises(AttributeError):
        pre.if_match = ANY
    assert pre.guards_write
    assert not conditions(if_modified_since="Sun, 06 Nov 1994 08:49:37 GMT").guards_write
    assert conditions(if_modified_since="garbage").if_modified_since is None


@pytest.mark.parametrize("headers, current, read, expected", [
    # If-Match: strong comparison; `*` means "exists".
    ({"if_match": '"1-2-3"'}, CURRENT, False, "ok"),
    ({"if_match": '"x", "1-2-3"'}, CURRENT, False, "ok"),
    ({"if_match": 'W/"1-2-3"'}, CURRENT, False, "412"),
    ({"if_match": '"1-2-4"'}, CURRENT, False, "412"),
    ({"if_match": '"1-2-4"'}, CURRENT, True, "412"),
    ({"if_match": '"1-2-3"'}, None, False, "412"),
    ({"if_match": "*"}, None, False, "412"),
    ({"if_match": "*"}, CURRENT, False, "ok"),
    ({"if_match": "*"}, DIRECTORY_VALIDATORS, False, "ok"),
    ({"if_match": '"1-2-3"'}, DIRECTORY_VALIDATORS, False, "412"),
    ({"if_match": "garbage"}, CURRENT, False, "412"),
    # If-Unmodified-Since, only without If-Match.
    ({"if_unmodified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, CURRENT, False, "ok"),
    ({"if_unmodified_since": "Sun, 06 Nov 1994 08:49:36 GMT"}, CURRENT, False, "412"),
    ({"if_unmodified_since": "Sun, 06 Nov 1994 08:49:36 GMT"}, CURRENT, True, "412"),
    ({"if_unmodified_since": "Sun, 06 Nov 1994 08:49:36 GMT"}, None, False, "ok"),
    ({"if_unmodified_since": "Sun, 06 Nov 1994 08:49:36 GMT"}, DIRECTORY_VALIDATORS, False, "ok"),
    ({"if_unmodified_since": "not a date"}, CURRENT, False, "ok"),
    ({"if_match": '"1-2-3"', "if_unmodified_since": "Sun, 06 Nov 1994 08:49:36 GMT"}, CURRENT, False, "ok"),
    # If-None-Match: weak comparison; 304 on reads, 412 on writes.
    ({"if_none_match": '"1-2-3"'}, CURRENT, True, "304"),
    ({"if_none_match": 'W/"1-2-3"'}, CURRENT, True, "304"),
    ({"if_none_match": '"a", "1-2-3"'}, CURRENT, True, "304"),
    ({"if_none_match": '"1-2-4"'}, CURRENT, True, "ok"),
    ({"if_none_match": '"1-2-3"'}, CURRENT, False, "412"),
    ({"if_none_match": '"1-2-4"'}, CURRENT, False, "ok"),
    ({"if_none_match": "*"}, CURRENT, True, "304"),
    ({"if_none_match": "*"}, CURRENT, False, "412"),
    ({"if_none_match": "*"}, None, False, "ok"),
    ({"if_none_match": "*"}, DIRECTORY_VALIDATORS, False, "412"),
    ({"if_none_match": "garbage"}, CURRENT, True, "ok"),
    # If-Modified-Since: reads only, and only without If-None-Match.
    ({"if_modified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, CURRENT, True, "304"),
    ({"if_modified_since": "Sun, 06 Nov 1994 08:49:38 GMT"}, CURRENT, True, "304"),
    ({"if_modified_since": "Sun, 06 Nov 1994 08:49:36 GMT"}, CURRENT, True, "ok"),
    ({"if_modified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, CURRENT, False, "ok"),
    ({"if_modified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}, DIRECTORY_VALIDATORS, True, "ok"),
    ({"if_modified_since": "Sunday, 06-Nov-94 08:49:37 GMT"}, CURRENT, True, "304"),
    ({"if_modified_since": "Sun, 06 Nov 1994 08:49:37 GMT", "if_none_match": '"other"'}, CURRENT, True, "ok"),
    # Precedence: a failed If-Match wins over a matching If-None-Match.
    ({"if_match": '"other"', "if_none_match": '"1-2-3"'}, CURRENT, True, "412"),
    ({"if_unmodified_since": "Sun, 06 Nov 1994 08:49:36 GMT", "if_none_match": '"1-2-3"'}, CURRENT, True, "412"),
])
def test_precondition_evaluation(headers, current, read, expected):
    assert outcome(conditions(**headers), current, read) == expected


@pytest.mark.parametrize("value, expected", [
    ('"1-2-3"', True),
    (' "1-2-3" ', True),
    ('"1-2-4"', False),
    ('W/"1-2-3"', False),  # If-Range needs a strong validator
    ("Sun, 06 Nov 1994 08:49:37 GMT", True),
    ("Sunday, 06-Nov-94 08:49:37 GMT", True),
    ("Sun, 06 Nov 1994 08:49:38 GMT", False),  # exact match only
    ("Sun, 06 Nov 1994 08:49:36 GMT", False),
    ("garbage", False),
    ("", False),
])
def test_if_range(value, expected):
    assert if_range_matches(value.encode(), CURRENT) is expected
    assert if_range_matches(value.encode(), DIRECTORY_VALIDATORS) is False


# -- the validators of an inode ------------------------------------------------------------------

def inode(**fields) -> Inode:
    base = dict(id=0x1f, path="/a/b", parent_id=2, name="b", type=FILE, size=10, mode=0o644,
                owner="alice", group="alice", mtime_ns=SUNDAY * 1_000_000_000 + 123,
                ctime_ns=0, backend="localfs", instance_id="n1", version=3)
    base.update(fields)
    return Inode(**base)


def test_etag_format():
    entry = inode()
    assert etag(entry) == f'"1f-3-{SUNDAY * 1_000_000_000 + 123:x}"'
    assert etag(inode(version=4)) != etag(entry)
    assert etag(inode(mtime_ns=entry.mtime_ns + 1)) != etag(entry)
    assert etag(inode(id=0x20)) != etag(entry)
    assert parse_etags(etag(entry).encode()) == ((False, etag(entry)),)


def test_cache_headers():
    entry = inode()
    assert cache_headers(entry) == (b"Accept-Ranges: bytes\r\n"
                                    b"ETag: " + etag(entry).encode() + b"\r\n"
                                    b"Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n")
    assert validators(entry) == Validators(etag(entry), SUNDAY)
    assert validators(inode(type=DIRECTORY)) == Validators(None, None)
