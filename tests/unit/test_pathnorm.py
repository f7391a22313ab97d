"""callfs._native.pathnorm against its plain-Python oracle, and every edge of API.md §5.1."""
import os
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import pathnorm_oracle as oracle  # noqa: E402
from callfs._native import pathnorm as native  # noqa: E402



def examples(count):
    """Hypothesis settings: no deadline (the first calls of a run are slow), `count` examples."""
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(module, function, arg):
    """The result, or the name of the module's own exception class: what the server acts on."""
    try:
        return getattr(module, function)(arg)
    except (module.PathError, module.MalformedURL) as exc:
        return type(exc).__name__


def assert_agree(function, arg):
    expected = outcome(oracle, function, arg)
    got = outcome(native, function, arg)
    assert got == expected, (function, arg)
    if isinstance(got, tuple):
        canonical = got[0]
        assert native.split_parent(canonical) == oracle.split_parent(canonical)
        assert native.ancestors(canonical) == oracle.ancestors(canonical)
        # A canonical path is a fixed point (and only the root ends in '/').
        assert native.normalize_path(canonical) == (canonical, canonical == "/")
    return got


def escape_all(raw):
    return b"".join(b"%%%02X" % b for b in raw)


def url(raw):
    return assert_agree("normalize_url_path", raw)


def body(path):
    return assert_agree("normalize_path", path)


# --- strategies -------------------------------------------------------------------------------

# Pieces that reach every branch. Most are valid (separators and dot segments, literal and
# encoded; escapes; multi-byte characters, whole or split across escapes; allowed neighbours of
# rejected characters; segments just under 255 bytes); each example adds at most two that break a
# rule (bad escapes, encoded separators, controls, bidi controls, invalid or truncated UTF-8,
# segments over 255 bytes), so that valid results and every kind of failure are both common.
VALID_PIECES = [
    "", ".", "..", "...", "/", "//", "./", "../", "a", "b", "dir", " ", "+", "#", "@",
    "%2e", "%2E", "%2e%2e", "%25", "%252e", "%20", "%61", "%7F", "%7f", "%09", "%C3%A9", "%c3",
    "%A9", "%E2%80%AF", "%F0%9F%98%80", "%C2%85", "é", "日本", "😀", "\u2029", "\u202f",
    "\u2065", "\u206a", "\t", "\x7f", "\u0085", "\uff0f", "x" * 254, "é" * 127,
    "😀" * 63 + "abc",
]
BREAKING_PIECES = [
    "%", "%2", "%zz", "%g0", "%2F", "%2f", "%5c", "%5C", "%00", "%E2%80%AE", "%E2%81%A6",
    "%ED%A0%80", "%C0%AF", "%E0%80%AF", "%F0%8F%BF%BF", "%F4%90%80%80", "\u202a", "\u202e", "\u2066", "\u2069", "\x00",
    "\x01", "\x1f", "\\", "x" * 255, "é" * 128,
]
RAW_BREAKING = [p.encode("utf-8") for p in BREAKING_PIECES] + [
    b"\xc3", b"\xe2\x80", b"\xf0\x9f\x98", b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80",
    b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
]
SURROGATES = st.characters(categories=["Cs"])
ANY_CHAR = st.one_of(st.characters(exclude_categories=()), SURROGATES)


@st.composite
def pieces(draw, valid, breaking, join):
    """Up to 12 valid pieces with up to two breaking ones dropped in at random places."""
    parts = draw(st.lists(valid, max_size=12))
    for piece in draw(st.lists(breaking, max_size=2)):
        parts.insert(draw(st.integers(0, len(parts))), piece)
    return join(parts)


URL_PIECES = pieces(st.sampled_from([p.encode("utf-8") for p in VALID_PIECES]),
                    st.sampled_from(RAW_BREAKING), b"".join)
BODY_PIECES = pieces(st.sampled_from(VALID_PIECES),
                     st.one_of(st.sampled_from(BREAKING_PIECES), SURROGATES), "".join)
TEXT_PIECES = pieces(st.sampled_from(VALID_PIECES), st.sampled_from(BREAKING_PIECES), "".join)
PLAIN_CHARS = st.one_of(st.characters(exclude_categories=("Cs", "Cc")),
                        st.sampled_from(["/", "/", ".", ".", "%", "\\", "\x00", "\t", "\u202e"]))


@st.composite
def percent_encoded(draw, text=st.text(PLAIN_CHARS, max_size=40)):
    """Valid UTF-8 with a random subset of bytes escaped, in either hex case."""
    raw = draw(text).encode("utf-8")
    escape = draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw)))
    form = "%{:02X}" if draw(st.booleans()) else "%{:02x}"
    return b"".join(form.format(b).encode() if e else bytes([b]) for b, e in zip(raw, escape))


@st.composite
def near_segment_limit(draw):
    """A segment of 250..260 bytes made of one character width, placed among other pieces."""
    char = draw(st.sampled_from(["x", "é", "日", "😀"]))
    size = draw(st.integers(250, 260))
    width = len(char.encode())
    segment = char * (size // width) + "y" * (size % width)
    before = "/".join(draw(st.lists(st.sampled_from(["a", ".", "b", "", "c/.."]), max_size=3)))
    after = draw(st.sampled_from(["", "/", "/..", "/../", "/.", "/c", "/../..", "/../d"]))
    return before + "/" + segment + after


@st.composite
def near_path_limit(draw):
    """Paths whose canonical form is 4080..4110 bytes, with dot-segment and slash noise."""
    target = draw(st.one_of(st.sampled_from([4095, 4096, 4097]), st.integers(4080, 4110)))
    size = 255 - draw(st.integers(0, 254))  # shrinks towards few, long segments
    char = draw(st.sampled_from(["x", "é", "😀"]))
    segments = []
    length = 0
    while length + size + 1 <= target:
        segments.append("s" * size)
        length += size + 1
    rest = target - length
    if rest > 1:
        width = len(char.encode())
        segments.append("t" * ((rest - 1) % width) + char * ((rest - 1) // width))
    for _ in range(draw(st.integers(0, 6))):  # noise that leaves the canonical path alone
        noise = draw(st.sampled_from(["", ".", "n/..", "m/o/../..", "q" * 300 + "/.."]))
        segments.insert(draw(st.integers(0, len(segments))), noise)
    return "/".join(segments) + draw(st.sampled_from(["", "/", "/.."]))


# --- properties: native agrees with the oracle ------------------------------------------------

@examples(2000)
@given(URL_PIECES)
@example(b"")
@example(b"/")
def test_url_from_pieces(raw):
    url(raw)


@examples(1000)
@given(st.binary(max_size=48))
def test_url_arbitrary_bytes(raw):
    url(raw)


@examples(1000)
@given(st.text(max_size=48))
def test_url_arbitrary_text(text):
    url(text.encode("utf-8"))


@examples(1000)
@given(percent_encoded())
def test_url_percent_encoded_text(raw):
    url(raw)


@examples(300)
@given(percent_encoded(TEXT_PIECES))
def test_url_percent_encoded_pieces(raw):
    url(raw)


@examples(1000)
@given(BODY_PIECES)
def test_body_from_pieces(path):
    body(path)


@examples(1000)
@given(st.text(ANY_CHAR, max_size=48))
def test_body_arbitrary_text(path):
    body(path)


@examples(500)
@given(st.lists(st.sampled_from(["a", "b", "", ".", "..", "%2e", "%2E%2e", ".%2e", "...", "x" * 256]),
                max_size=10).map("/".join))
def test_dot_segments(path):
    url(path.encode())
    body(path)


@examples(300)
@given(near_segment_limit())
def test_near_segment_limit(path):
    body(path)
    url(path.encode("utf-8"))


@examples(300)
@given(near_path_limit())
def test_near_path_limit(path):
    body(path)
    url(path.encode("utf-8"))


# --- examples: API.md §5.1 --------------------------------------------------------------------

SPEC_EXAMPLES = [
    ("dir/../secret.txt", ("/secret.txt", False)),
    ("./a.txt", ("/a.txt", False)),
    ("a//b///c", ("/a/b/c", False)),
    ("a/b/.", ("/a/b", False)),
    ("a/./b/", ("/a/b", True)),
    ("dir/../other/", ("/other", True)),
    ("", ("/", False)),
    ("/", ("/", True)),
    (".", ("/", False)),
    ("./", ("/", True)),
    ("a/..", ("/", False)),
    ("//", ("/", True)),
    ("/a/b.txt", ("/a/b.txt", False)),
    ("a/b.txt", ("/a/b.txt", False)),
]


@pytest.mark.parametrize("path, expected", SPEC_EXAMPLES)
def test_spec_examples(path, expected):
    assert url(path.encode()) == expected
    assert body(path) == expected


@pytest.mark.parametrize("raw, expected", [
    (b"%20", "/ "),
    (b"%2B", "/+"),
    (b"+", "/+"),
    (b"%25", "/%"),
    (b"%252e", "/%2e"),
    (b"%2e", "/"),
    (b"a/%2e/b", "/a/b"),
    (b"a/%2E%2e", "/"),
    (b"%41%62", "/Ab"),
    (b"%c3%a9", "/\u00e9"),
    (b"%C3%A9", "/\u00e9"),
    (b"\xc3%A9", "/\u00e9"),
    (b"%23", "/#"),
    (b"%EF%BC%8F", "/\uff0f"),
])
def test_decoded_exactly_once(raw, expected):
    assert url(raw) == (expected, False)


@pytest.mark.parametrize("name", [
    "with space", ".hidden", "archive.tar.gz", "name...", "...", "..a", "a..", "+", "@", "%",
    "#", "\uff0f", "x", "noext", "\x7f", "\u0085", "\t", "Caf\u0065\u0301", "Caf\u00e9", "😀",
])
def test_names_kept_as_decoded(name):
    assert body(name) == ("/" + name, False)
    assert url(b"d/" + escape_all(name.encode())) == ("/d/" + name, False)
    if name != "%":
        assert url(("d/" + name).encode()) == ("/d/" + name, False)


def test_percent_is_literal_in_bodies():
    assert body("a%2Fb/%2e%2e/%zz") == ("/a%2Fb/%2e%2e/%zz", False)
    assert body("%") == ("/%", False)


# --- examples: rejected and allowed characters ------------------------------------------------

@pytest.mark.parametrize("code", range(0x20))
def test_control_bytes(code):
    char = chr(code)
    allowed = code == 0x09
    expected = ("/a" + char + "b", False) if allowed else "PathError"
    assert url(b"a" + bytes([code]) + b"b") == expected
    assert url(b"a%" + b"%02X" % code + b"b") == expected
    assert body("a" + char + "b") == expected


@pytest.mark.parametrize("raw, expected", [
    (b"\x7f", "/\x7f"), (b"%7F", "/\x7f"), (b"%7f", "/\x7f"),
    (b"\xc2\x85", "/\u0085"), (b"%C2%85", "/\u0085"), (b"\xc2\x9f", "/\u009f"),
])
def test_del_and_non_ascii_controls_allowed(raw, expected):
    assert url(raw) == (expected, False)


BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]


@pytest.mark.parametrize("code", BIDI)
def test_bidi_controls_rejected(code):
    char = chr(code)
    encoded = char.encode("utf-8")
    assert url(b"a" + encoded) == "PathError"
    assert url(b"a" + escape_all(encoded)) == "PathError"
    assert body("a/" + char + "/..") == "PathError"  # step 4 sees the whole path


@pytest.mark.parametrize("code", [0x2029, 0x202F, 0x2065, 0x206A, 0x200E, 0x200F, 0x061C])
def test_bidi_neighbours_allowed(code):
    char = chr(code)
    assert url(char.encode()) == ("/" + char, False)
    assert body(char) == ("/" + char, False)


@pytest.mark.parametrize("raw", [
    b"%2F", b"%2f", b"%5C", b"%5c", b"a%2Fb", b"a%2fb/", b"a/%5cb", b"%2F..", b"a%2F%2e%2e",
    b"\\", b"a\\b", b"%00", b"a%00b",
])
def test_encoded_separators_backslash_and_nul(raw):
    assert url(raw) == "PathError"


@pytest.mark.parametrize("path", ["\\", "a\\b", "a/b\\", "\x00", "a/\x00"])
def test_backslash_and_nul_in_bodies(path):
    assert body(path) == "PathError"


# --- examples: malformed escapes win over everything ------------------------------------------

@pytest.mark.parametrize("raw", [
    b"%", b"%4", b"%zz", b"%g0", b"%0g", b"a%", b"a%4", b"%%", b"%%41", b"% 1", b"%+1", b"%-1",
    b"%2", b"a/%2/b", b"%\xc3\xa9", b"%4/", b"/%/",
])
def test_malformed_escapes(raw):
    assert url(raw) == "MalformedURL"


@pytest.mark.parametrize("raw", [
    b"..%zz", b"../%zz", b"%2F%zz", b"%2F/%4", b"\x00%zz", b"a\\b/%", b"\xff%zz", b"\xc3/%g0",
    b"%C3%zz", b"%E2%80%AE%4", b"a/%2e%2e/../..%", b"x" * 300 + b"%g", b"a%zz/..",
    b"\x01" + b"/x" * 2000 + b"%", b"%2e%2e/" * 10 + b"%",
])
def test_malformed_escape_wins_over_path_error(raw):
    assert url(raw) == "MalformedURL"


# --- examples: UTF-8 --------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xf0\x80\x80\xaf",
    b"\xf0\x8f\xbf\xbf",                                # overlong
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0\x80\xed\xb0\x80",  # surrogates
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf7\xbf\xbf\xbf",  # above U+10FFFF
    b"\xff", b"\xfe", b"\x80", b"a\xbf",                # never valid / stray continuation
    b"\xc3", b"a\xe2\x82", b"\xf0\x9f\x98", b"\xc3/", b"\xc3a", b"\xe2\x82/\xac",  # truncated
    b"%C0%AF", b"%ED%A0%80", b"%F4%90%80%80", b"%FF", b"%C3", b"%C3/%A9", b"\xc3%41",
])
def test_invalid_utf8(raw):
    assert url(raw) == "PathError"


@pytest.mark.parametrize("raw", [
    b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf",
    b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"%F4%8F%BF%BF", b"\xf0%9F\x98%80",
])
def test_valid_utf8_boundaries(raw):
    assert url(raw) == ("/" + oracle.percent_decode(raw).decode("utf-8"), False)


@pytest.mark.parametrize("path", ["\ud800", "a/\udfff", "\udc80/..", "ok/\ud83d"])
def test_surrogates_in_bodies(path):
    assert body(path) == "PathError"


# --- examples: '..' ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "..", "/..", "../", "../x", "./..", "a/../..", "a/b/../../..", "%2e%2e", ".%2e", "%2E.",
    "a/%2e%2e/..", "x/../../x", "/../a/b",
])
def test_climbing_above_root_rejected(path):
    assert url(path.encode()) == "PathError"


@pytest.mark.parametrize("path, expected", [
    ("a/b/../..", "/"), ("a/b/..", "/a"), ("a/../b/../c", "/c"), ("a/b/c/../../d", "/a/d"),
    ("é/日本/../x", "/é/x"), ("a/.../..", "/a"),
])
def test_dot_dot_resolved(path, expected):
    assert url(path.encode())[0] == expected
    assert body(path)[0] == expected


# --- examples: length limits ------------------------------------------------------------------

@pytest.mark.parametrize("segment, ok", [
    ("a" * 255, True), ("a" * 256, False),
    ("é" * 127 + "a", True), ("é" * 128, False),             # 2-byte
    ("日" * 85, True), ("日" * 85 + "a", False),               # 3-byte: 255 / 256
    ("😀" * 63 + "abc", True), ("😀" * 64, False),             # 4-byte
])
def test_segment_limit(segment, ok):
    expected = ("/d/" + segment, False) if ok else "PathError"
    assert body("d/" + segment) == expected
    assert url(("d/" + segment).encode()) == expected
    assert url(b"d/" + escape_all(segment.encode())) == expected


def test_segment_limit_applies_to_the_canonical_segments():
    # §5.1 step 6 follows step 5: a long segment removed by '..' is not part of the result.
    assert url(b"a" * 256 + b"/..") == ("/", False)
    assert url(b"a" * 300 + b"/../b") == ("/b", False)
    assert url(b"b/" + b"a" * 300 + b"/../c/") == ("/b/c", True)
    assert url(b"a" * 256 + b"/b/..") == "PathError"


def _path_of(size, last="b"):
    """A canonical path of exactly `size` bytes: 254-byte segments, then a tail of `last`."""
    head = "/" + "a" * 254
    count = -(-(size - 1 - 255) // len(head))  # as many as leave 1..255 bytes for the tail
    rest = size - count * len(head) - 1  # bytes of the final segment
    width = len(last.encode())
    tail = "z" * (rest % width) + last * (rest // width)
    path = head * count + "/" + tail
    assert len(path.encode()) == size
    return path


@pytest.mark.parametrize("size, ok", [(4095, True), (4096, True), (4097, False), (5000, False)])
@pytest.mark.parametrize("last", ["b", "é", "日", "😀"])
def test_path_limit(size, ok, last):
    path = _path_of(size, last)
    expected = (path, False) if ok else "PathError"
    assert body(path) == expected
    assert url(path.encode()) == expected
    assert url(path.encode() + b"/") == ((path, True) if ok else "PathError")


def test_path_limit_applies_to_the_canonical_path():
    path = _path_of(4096)
    assert url((path + "/x/..").encode()) == (path, False)
    assert url(("./" * 3000 + path[1:]).encode()) == (path, False)
    assert url(("x/../" * 3000 + "ok").encode()) == ("/ok", False)
    assert url(("a/" * 3000 + "../" * 3000).encode()) == ("/", True)
    assert url((_path_of(6000) + "/.." * 10).encode())[1] is False
    assert url(b"//" * 5000) == ("/", True)


def test_long_escaped_input_decodes_short():
    assert url(b"%61" * 255) == ("/" + "a" * 255, False)
    assert url(b"/%62" * 2048) == ("/b" * 2048, False)
    assert url(b"/%62" * 2048 + b"c") == "PathError"


# --- split_parent and ancestors ---------------------------------------------------------------

@pytest.mark.parametrize("canonical, parent, name, chain", [
    ("/", "/", "", []),
    ("/a", "/", "a", ["/"]),
    ("/a/b", "/a", "b", ["/", "/a"]),
    ("/a/b/c", "/a/b", "c", ["/", "/a", "/a/b"]),
    ("/é/日本/😀", "/é/日本", "😀", ["/", "/é", "/é/日本"]),
    ("/a b/.hidden/x.tar.gz", "/a b/.hidden", "x.tar.gz", ["/", "/a b", "/a b/.hidden"]),
])
def test_split_parent_and_ancestors(canonical, parent, name, chain):
    for module in (native, oracle):
        assert module.split_parent(canonical) == (parent, name)
        assert module.ancestors(canonical) == chain


@pytest.mark.parametrize("bad", ["", "a", "a/b"])
def test_split_parent_and_ancestors_need_a_canonical_path(bad):
    for module in (native, oracle):
        with pytest.raises(ValueError):
            module.split_parent(bad)
        with pytest.raises(ValueError):
            module.ancestors(bad)


# --- the interface ----------------------------------------------------------------------------

def test_exceptions_are_value_errors():
    assert issubclass(native.PathError, ValueError)
    assert issubclass(native.MalformedURL, ValueError)
    assert not issubclass(native.PathError, native.MalformedURL)
    assert not issubclass(native.MalformedURL, native.PathError)


@pytest.mark.parametrize("function, arg", [
    ("normalize_url_path", None), ("normalize_url_path", "/a"), ("normalize_path", None),
    ("normalize_path", b"/a"), ("split_parent", None), ("ancestors", None),
])
def test_wrong_types(function, arg):
    with pytest.raises(TypeError):
        getattr(native, function)(arg)


def test_results_are_str_and_bool():
    canonical, trailing = native.normalize_url_path(b"/a/%C3%A9/")
    assert type(canonical) is str and type(trailing) is bool
    assert (canonical, trailing) == ("/a/\u00e9", True)
