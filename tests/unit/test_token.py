"""callfs._native.token against its plain-Python oracle (API.md §10.2): signing, verifying and
the syntax check of presented tokens agree on any secret, id, path and mutation."""
import os
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import token_oracle as oracle  # noqa: E402
from callfs._native import token as native  # noqa: E402

SECRET = "link-secret-0123456789"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def examples(count):
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call, *args):
    """The result, or the exception's class: what a caller acts on."""
    try:
        return call(*args)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        return type(exc)


def signers(secret):
    return native.LinkSigner(secret), oracle.LinkSigner(secret)


# --- strategies -------------------------------------------------------------------------------

secrets_ = st.one_of(st.text(max_size=80), st.binary(max_size=80),
                     st.sampled_from(["", SECRET, "change-me-link-secret", "ü" * 40, "x" * 200]))
# Any Unicode, lone surrogates included (they cannot be encoded: both sides refuse them).
paths = st.one_of(st.text(st.characters(), max_size=120),
                  st.text(st.characters(exclude_categories=["Cs"]), max_size=120).map(
                      lambda text: "/" + text),
                  st.sampled_from(["/", "/dir/file.txt", "/a b/%41.txt", "/" + "x" * 4095]))
raw_ids = st.binary(min_size=16, max_size=16)


@st.composite
def mutated(draw, token: str):
    """A token changed the ways a client or an attacker changes one."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "extend", "swap-dot",
                                 "case", "non-ascii"]))
    pos = draw(st.integers(0, len(token) - 1))
    chars = st.sampled_from(ALPHABET + "=.%+/ \x00é")
    if kind == "replace":
        return token[:pos] + draw(chars) + token[pos + 1:]
    if kind == "insert":
        return token[:pos] + draw(chars) + token[pos:]
    if kind == "delete":
        return token[:pos] + token[pos + 1:]
    if kind == "truncate":
        return token[:pos]
    if kind == "extend":
        return token + draw(chars)
    if kind == "swap-dot":
        return token.replace(".", draw(chars), 1)
    if kind == "case":
        return token[:pos] + token[pos].swapcase() + token[pos + 1:]
    return token[:pos] + draw(st.characters(min_codepoint=0x80)) + token[pos + 1:]


# --- agreement --------------------------------------------------------------------------------

@examples(400)
@given(secrets_, raw_ids, paths)
@example(SECRET, bytes(16), "/")
@example("", b"\xff" * 16, "")
@example(SECRET, bytes(range(16)), "/\ud800")
def test_token_for_agrees(secret, raw_id, path):
    ours, spec = signers(secret)
    got = outcome(ours.token_for, raw_id, path)
    assert got == outcome(spec.token_for, raw_id, path)
    if isinstance(got, str):
        assert len(got) == 69 and got[24] == "." and got[22:24] == "==" and got[-1] == "="
        assert native.well_formed(got) and oracle.well_formed(got)
        assert ours.verify(got, path) and spec.verify(got, path)
        assert ours.verify(got.encode(), path)


@examples(300)
@given(secrets_, st.text(max_size=40), paths)
def test_signature_agrees(secret, token_id, path):
    ours, spec = signers(secret)
    assert outcome(ours.signature, token_id, path) == outcome(spec.signature, token_id, path)


@examples(600)
@given(st.data(), raw_ids, paths)
def test_mutated_tokens_agree(data, raw_id, path):
    ours, spec = signers(SECRET)
    try:
        token = spec.token_for(raw_id, path)
    except UnicodeEncodeError:
        return
    changed = data.draw(mutated(token))
    assert native.well_formed(changed) == oracle.well_formed(changed), changed
    assert ours.verify(changed, path) == spec.verify(changed, path), changed
    other = data.draw(paths)
    if other != path and outcome(spec.signature, "x", other) is not UnicodeEncodeError:
        # A genuine token does not verify for any other path.
        assert not ours.verify(token, other) and not spec.verify(token, other)
    if changed != token:
        # Only the exact token verifies: every change breaks its shape or its signature.
        assert not ours.verify(changed, path)


@examples(500)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80),
                 st.text(ALPHABET + "=.", min_size=69, max_size=69),
                 st.builds(lambda a, b: a + "==." + b + "=",
                           st.text(ALPHABET, min_size=22, max_size=22),
                           st.text(ALPHABET, min_size=43, max_size=43))))
def test_well_formed_agrees(candidate):
    assert outcome(native.well_formed, candidate) == outcome(oracle.well_formed, candidate)


@examples(200)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_same_bytes_agrees(a, b):
    assert native.same_bytes(a, b) == oracle.same_bytes(a, b) == (a == b)
    assert native.same_bytes(a, a)


@examples(100)
@given(secrets_, paths)
def test_issued_tokens_verify_with_the_oracle(secret, path):
    ours, spec = signers(secret)
    try:
        token = ours.issue(path)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            spec.issue(path)
        return
    assert oracle.well_formed(token) and spec.verify(token, path)
    assert token[25:] == spec.signature(token[:24], path)


# --- examples the properties do not reach -------------------------------------------------------

# Computed with the oracle (hmac/hashlib/base64) for the id bytes 0..15, and the first also with
# `openssl dgst -sha256 -mac HMAC`: links issued by a deployment before a switch must keep
# verifying, so the format is pinned byte for byte.
KNOWN_ID = bytes(range(16))
KNOWN_PATH = "/dir/file.txt"
KNOWN_TOKEN = "AAECAwQFBgcICQoLDA0ODw==.0bG2mK6Ophi1ZCMq2B5_FM0l_dAnJdgV1J1VynNKaZk="
KNOWN_UNICODE_PATH = "/Grüße/naïve file.txt"
KNOWN_UNICODE_TOKEN = "AAECAwQFBgcICQoLDA0ODw==.QU7KF2RYBL5BM3iROnrAfYsz1wxNqZkVp7JUtlWCiIQ="


def test_known_answer():
    ours, spec = signers(SECRET)
    assert spec.token_for(KNOWN_ID, KNOWN_PATH) == KNOWN_TOKEN
    assert ours.token_for(KNOWN_ID, KNOWN_PATH) == KNOWN_TOKEN
    assert ours.token_for(KNOWN_ID, KNOWN_UNICODE_PATH) == KNOWN_UNICODE_TOKEN
    assert spec.token_for(KNOWN_ID, KNOWN_UNICODE_PATH) == KNOWN_UNICODE_TOKEN
    assert ours.verify(KNOWN_TOKEN, KNOWN_PATH)
    assert ours.verify(KNOWN_TOKEN.encode(), KNOWN_PATH)
    assert not ours.verify(KNOWN_TOKEN, KNOWN_UNICODE_PATH)
    # Bytes of the secret count as they are; a str as its UTF-8.
    assert native.LinkSigner(SECRET.encode()).token_for(KNOWN_ID, KNOWN_PATH) == KNOWN_TOKEN
    # Another secret: the same shape, another signature.
    other = native.LinkSigner(SECRET + "!")
    assert other.token_for(KNOWN_ID, KNOWN_PATH)[:25] == KNOWN_TOKEN[:25]
    assert not other.verify(KNOWN_TOKEN, KNOWN_PATH)


def test_syntax_edges():
    good = KNOWN_TOKEN
    assert native.well_formed(good)
    assert not native.well_formed("")
    assert not native.well_formed(good[:-1])
    assert not native.well_formed(good + "=")
    assert not native.well_formed(good.replace(".", "=", 1))
    assert not native.well_formed(good[:24] + "." + good[24:-1])  # two dots
    assert not native.well_formed(good.replace("==.", "=A.", 1))  # id padding
    assert not native.well_formed(good[:-1] + "A")  # sig padding
    assert not native.well_formed(good.replace("-", "+").replace("_", "/") + "")
    # The spare bits of the last data character: only the canonical spelling of the bytes.
    def spelled(pos, value):
        return good[:pos] + ALPHABET[value] + good[pos + 1:]
    id_last, sig_last = ALPHABET.index(good[21]), ALPHABET.index(good[67])
    for bit in (1, 2, 4, 8):
        assert not native.well_formed(spelled(21, id_last ^ bit))
    assert native.well_formed(spelled(21, id_last ^ 16))
    for bit in (1, 2):
        assert not native.well_formed(spelled(67, sig_last ^ bit))
    assert native.well_formed(spelled(67, sig_last ^ 4))
    with pytest.raises(TypeError):
        native.well_formed(None)
    with pytest.raises(TypeError):
        native.well_formed(bytearray(good.encode()))


def test_argument_errors():
    ours, spec = signers(SECRET)
    for signer in (ours, spec):
        with pytest.raises(ValueError):
            signer.token_for(b"short", "/a")
        with pytest.raises(TypeError):
            signer.token_for(None, "/a")
        with pytest.raises(TypeError):
            signer.verify(KNOWN_TOKEN, None)
        with pytest.raises(UnicodeEncodeError):
            signer.token_for(KNOWN_ID, "/\udcff")
    for module in (native, oracle):
        with pytest.raises(TypeError):
            module.LinkSigner(None)
        with pytest.raises(TypeError):
            module.same_bytes(b"a", None)


def test_issued_ids_are_random():
    ours = native.LinkSigner(SECRET)
    tokens = {ours.issue("/a")[:24] for _ in range(1000)}
    assert len(tokens) == 1000


def test_signer_keeps_no_secret():
    ours = native.LinkSigner(SECRET)
    assert SECRET not in repr(ours)
    assert not any(SECRET in str(getattr(ours, name, "")) for name in dir(ours))
