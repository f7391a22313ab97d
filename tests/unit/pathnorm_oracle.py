"""Plain-Python specification of `callfs._native.pathnorm` (API.md §5.1).

Written for clarity, not speed: decode, then validate, then split and resolve, one step at a
time in the order of §5.1. The native module must agree with it on every input (same result or
same exception class); tests/unit/test_pathnorm.py checks that with hypothesis.
"""
import posixpath

MAX_SEGMENT = 255
MAX_PATH = 4096

HEX_DIGITS = b"0123456789abcdefABCDEF"
BIDI_CONTROLS = frozenset(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


class PathError(ValueError):
    """A rule of API.md §5.1 is broken: the server answers 400 INVALID_PATH."""


class MalformedURL(ValueError):
    """A percent escape is malformed: the server answers a plain 400 before authentication."""


def percent_decode(raw):
    """Decode every %XX once. A malformed escape anywhere wins over an encoded separator."""
    out = bytearray()
    encoded_separator = False
    i = 0
    while i < len(raw):
        if raw[i] != 0x25:  # '%'
            out.append(raw[i])
            i += 1
            continue
        digits = raw[i + 1:i + 3]
        if len(digits) != 2 or any(d not in HEX_DIGITS for d in digits):
            raise MalformedURL("malformed percent escape")
        value = int(digits, 16)
        if value in (0x2F, 0x5C):  # '/' or '\'
            encoded_separator = True
        out.append(value)
        i += 3
    if encoded_separator:
        raise PathError("encoded '/' or '\\' in path")
    return bytes(out)


def resolve(text):
    """Steps 3-7 of §5.1 on decoded text: (canonical, trailing_slash)."""
    trailing = text.endswith("/")
    for ch in text:
        if ch == "\\":
            raise PathError("backslash in path")
        if ord(ch) < 0x20 and ch != "\t":
            raise PathError("control character in path")
        if ch in BIDI_CONTROLS:
            raise PathError("bidirectional control character in path")
    segments = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise PathError("path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    if any(len(segment.encode("utf-8")) > MAX_SEGMENT for segment in segments):
        raise PathError(f"path segment longer than {MAX_SEGMENT} bytes")
    canonical = "/" + "/".join(segments)
    if len(canonical.encode("utf-8")) > MAX_PATH:
        raise PathError(f"path longer than {MAX_PATH} bytes")
    return canonical, trailing


def normalize_url_path(raw):
    """A request-target path (bytes after the route prefix, before '?'), decoded exactly once."""
    decoded = percent_decode(raw)
    try:
        text = decoded.decode("utf-8")  # strict: no overlongs, surrogates or > U+10FFFF
    except UnicodeDecodeError:
        raise PathError("path is not valid UTF-8") from None
    return resolve(text)


def normalize_path(path):
    """A path from a JSON body: not percent-decoded; must be encodable as UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError("path is not valid UTF-8") from None
    return resolve(path)


def _check_canonical(canonical):
    if not canonical.startswith("/"):
        raise ValueError("not a canonical path")


def split_parent(canonical):
    """'/a/b' -> ('/a', 'b'); '/' -> ('/', '')."""
    _check_canonical(canonical)
    return posixpath.split(canonical)


def ancestors(canonical):
    """Strict ancestors, root first: '/a/b/c' -> ['/', '/a', '/a/b']; '/' -> []."""
    _check_canonical(canonical)
    if canonical == "/":
        return []
    names = canonical[1:].split("/")
    return ["/"] + ["/" + "/".join(names[:k]) for k in range(1, len(names))]
