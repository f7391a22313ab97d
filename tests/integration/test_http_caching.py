"""Range, validators and conditional requests on /v1/files (API.md §2; RFC 9110 §13, §14) as a
client sees them: status, headers, the bytes received and the state left behind."""
import json
import re
import threading
import time
import urllib.parse
from email.utils import formatdate, parsedate_to_datetime

import pytest

from conftest import KEYS, random_bytes
from rawhttp import RawConnection, request_bytes


@pytest.fixture(scope="module")
def server(backend_server):
    """This module's checks hold on every backend: they run on localfs and on S3."""
    return backend_server

ETAG = re.compile(r'^"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"$')
SIZE = 4096


def url(path: str) -> str:
    return "/v1/files" + urllib.parse.quote(path, safe="/")


def put(server, path, content, headers=None, user="alice"):
    return server.request("PUT", url(path), content, headers=headers, user=user)


def get(server, path, headers=None, user="alice"):
    return server.request("GET", url(path), headers=headers, user=user)


def head(server, path, headers=None, user="alice"):
    status, response_headers, body = server.request("HEAD", url(path), headers=headers, user=user)
    assert body == b""
    return status, response_headers


def json_error(status, headers, body, expected_status, code):
    assert status == expected_status, (status, body)
    assert headers["content-type"] == "application/json"
    obj = json.loads(body)
    assert obj["code"] == code and obj["message"]
    return obj


@pytest.fixture
def stored(server, ns):
    """(path, content, etag, last-modified) of a fresh 4 KiB file."""
    path = f"{ns}/data.bin"
    content = random_bytes(SIZE)
    assert put(server, path, content)[0] == 201
    status, headers = head(server, path)
    assert status == 200
    return path, content, headers["etag"], headers["last-modified"]


def one_second_before(http_date: str) -> str:
    return formatdate(parsedate_to_datetime(http_date).timestamp() - 1, usegmt=True)


# -- validators ----------------------------------------------------------------------------------

def test_get_and_head_send_validators(server, stored):
    path, content, tag, modified = stored
    status, headers, body = get(server, path)
    assert status == 200 and body == content
    assert headers["accept-ranges"] == "bytes"
    assert ETAG.match(headers["etag"]), headers["etag"]
    assert headers["etag"] == tag
    assert headers["last-modified"] == modified
    # Last-Modified is the X-CallFS-MTime second as an IMF-fixdate.
    stamp = time.strptime(headers["x-callfs-mtime"], "%Y-%m-%dT%H:%M:%SZ")
    assert modified == time.strftime("%a, %d %b %Y %H:%M:%S GMT", stamp)
    # Stable across requests.
    assert get(server, path)[1]["etag"] == tag
    assert head(server, path)[1]["etag"] == tag


def test_etag_changes_with_every_write(server, stored):
    path, content, tag, _ = stored
    assert put(server, path, content)[0] == 200  # the same bytes again: a new version
    second = head(server, path)[1]["etag"]
    assert second != tag and ETAG.match(second)
    assert put(server, path, b"other")[0] == 200
    third = get(server, path)[1]["etag"]
    assert third not in (tag, second)
    # Delete and re-create: never the old tag.
    assert server.request("DELETE", url(path))[0] == 204
    assert put(server, path, content)[0] == 201
    assert head(server, path)[1]["etag"] not in (tag, second, third)


def test_directories_have_no_etag_and_ignore_range(server, stored, ns):
    status, headers, body = get(server, ns, headers={"Range": "bytes=0-1"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert "etag" not in headers and "content-range" not in headers
    assert [item["name"] for item in json.loads(body)] == ["data.bin"]
    status, headers = head(server, ns)
    assert status == 200 and "etag" not in headers


def test_empty_file(server, ns):
    path = f"{ns}/empty"
    assert put(server, path, b"")[0] == 201
    status, headers, body = get(server, path)
    assert status == 200 and body == b"" and ETAG.match(headers["etag"])
    status, headers, body = get(server, path, {"Range": "bytes=0-"})
    json_error(status, headers, body, 416, "RANGE_NOT_SATISFIABLE")
    assert headers["content-range"] == "bytes */0"
    status, headers, body = get(server, path, {"Range": "bytes=-1"})
    assert status == 416 and headers["content-range"] == "bytes */0"


# -- Range ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, start, end", [
    ("0-99", 0, 99),  # first
    ("1000-1999", 1000, 1999),  # middle
    ("4000-4095", 4000, 4095),  # last
    ("4000-99999", 4000, 4095),  # past the end: clipped
    ("4095-4095", 4095, 4095),
    ("-100", 3996, 4095),  # suffix
    ("-99999", 0, 4095),  # suffix longer than the file
    ("100-", 100, 4095),  # open-ended
    ("0-", 0, 4095),
    ("0-99999999999999999999999999", 0, 4095),
])
def test_single_range_206(server, stored, spec, start, end):
    path, content, tag, modified = stored
    status, headers, body = get(server, path, {"Range": f"bytes={spec}"})
    assert status == 206, body
    assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["content-length"] == str(end - start + 1)
    assert headers["content-type"] == "application/octet-stream"
    assert body == content[start:end + 1]
    assert headers["etag"] == tag and headers["last-modified"] == modified
    assert headers["accept-ranges"] == "bytes"
    assert headers["x-callfs-size"] == str(SIZE)


@pytest.mark.parametrize("spec", ["4096-", "4096-5000", "99999999999999999999-", "-0", "5000-,-0"])
def test_unsatisfiable_range_416(server, stored, spec):
    path, content, _, _ = stored
    status, headers, body = get(server, path, {"Range": f"bytes={spec}"})
    json_error(status, headers, body, 416, "RANGE_NOT_SATISFIABLE")
    assert headers["content-range"] == f"bytes */{SIZE}"
    # The file is still there, whole.
    assert get(server, path)[2] == content


@pytest.mark.parametrize("value", [
    "bytes=5-2", "items=0-1", "bytes=abc", "bytes=0-1;", "bytes=", "0-1", "bytes=1-2,x",
    "bytes=" + "9" * 80 + "-",
])
def test_invalid_range_is_ignored(server, stored, value):
    path, content, _, _ = stored
    status, headers, body = get(server, path, {"Range": value})
    assert status == 200 and body == content
    assert "content-range" not in headers


@pytest.mark.parametrize("spec, expected", [
    ("0-9,20-29", None),  # disjoint: the whole file
    ("0-9,-10", None),
    ("0-9,10-19", (0, 19)),  # adjacent: one range
    ("0-9,5-30", (0, 30)),  # overlapping
    ("50-60,0-9,5-49", (0, 60)),
    ("0-0,5000-", (0, 0)),  # only one part is satisfiable
])
def test_multiple_ranges(server, stored, spec, expected):
    path, content, _, _ = stored
    status, headers, body = get(server, path, {"Range": f"bytes={spec}"})
    if expected is None:
        assert status == 200 and body == content and "content-range" not in headers
    else:
        start, end = expected
        assert status == 206
        assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
        assert body == content[start:end + 1]


def test_too_many_ranges_get_the_whole_file(server, stored):
    path, content, _, _ = stored
    many = ",".join(f"{i}-{i}" for i in range(101))  # would coalesce, but there are too many
    status, headers, body = get(server, path, {"Range": f"bytes={many}"})
    assert status == 200 and body == content
    within = ",".join(f"{i}-{i}" for i in range(100))
    status, headers, body = get(server, path, {"Range": f"bytes={within}"})
    assert status == 206 and body == content[:100]


def test_head_ignores_range(server, stored):
    path, _, tag, _ = stored
    status, headers = head(server, path, {"Range": "bytes=0-9"})
    assert status == 200 and "content-range" not in headers
    assert headers["etag"] == tag and headers["accept-ranges"] == "bytes"


def test_if_range(server, stored):
    path, content, tag, modified = stored
    cases = [
        (tag, 206),
        ('"0-0-0"', 200),  # another version
        ("W/" + tag, 200),  # weak: never for If-Range
        (modified, 206),  # the exact Last-Modified
        (one_second_before(modified), 200),
        ("not a validator", 200),
    ]
    for validator, expected in cases:
        status, headers, body = get(server, path, {"Range": "bytes=10-19", "If-Range": validator})
        assert status == expected, validator
        assert body == (content[10:20] if expected == 206 else content)
    # A stale If-Range with an unsatisfiable range: the whole file, not 416.
    status, _, body = get(server, path, {"Range": "bytes=99999-", "If-Range": '"0-0-0"'})
    assert status == 200 and body == content
    # If-Range without Range changes nothing.
    status, _, body = get(server, path, {"If-Range": '"0-0-0"'})
    assert status == 200 and body == content


def test_range_in_the_middle_of_a_large_file(server, ns):
    path = f"{ns}/large.bin"
    content = random_bytes(12 * 1024 * 1024)
    assert put(server, path, content)[0] == 201
    start, end = 5_000_001, 9_999_998
    status, headers, body = get(server, path, {"Range": f"bytes={start}-{end}"})
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{end}/{len(content)}"
    assert body == content[start:end + 1]
    status, headers, body = get(server, path, {"Range": "bytes=-1048577"})
    assert status == 206 and body == content[-1048577:]


def test_resume_a_download_like_curl_continue(server, ns):
    """`curl -C -`: read part of the file, lose the connection, ask for the rest from there."""
    path = f"{ns}/resume.bin"
    content = random_bytes(3 * 1024 * 1024 + 17)
    assert put(server, path, content)[0] == 201
    conn = server.connect()
    conn.request("GET", url(path), headers={"Authorization": f"Bearer {KEYS['alice']}"})
    response = conn.getresponse()
    assert response.status == 200
    tag = response.getheader("ETag")
    partial = response.read(1_234_567)
    conn.close()  # the transfer breaks off
    assert partial == content[:len(partial)]
    status, headers, rest = get(server, path, {"Range": f"bytes={len(partial)}-", "If-Range": tag})
    assert status == 206
    assert headers["content-range"] == f"bytes {len(partial)}-{len(content) - 1}/{len(content)}"
    assert partial + rest == content
    # Once complete, asking for more is unsatisfiable (curl then reports the file as done).
    status, headers, _ = get(server, path, {"Range": f"bytes={len(content)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(content)}"
    # Resuming against a file that changed meanwhile gets the whole new file.
    replaced = random_bytes(1000)
    assert put(server, path, replaced)[0] == 200
    status, _, body = get(server, path, {"Range": f"bytes={len(partial)}-", "If-Range": tag})
    assert status == 200 and body == replaced


# -- 304 -----------------------------------------------------------------------------------------

def assert_not_modified(status, headers, body, tag, modified):
    assert status == 304 and body == b""
    assert "content-length" not in headers
    assert headers["etag"] == tag and headers["last-modified"] == modified
    assert headers["x-callfs-type"] == "file" and headers["x-callfs-size"] == str(SIZE)
    assert headers["x-callfs-owner"] == "alice" and headers["x-callfs-mtime"]
    assert headers["x-request-id"]


@pytest.mark.parametrize("value", ["{tag}", '"x", {tag}', "W/{tag}", "*", ' "x" ,W/{tag} '])
def test_if_none_match_304(server, stored, value):
    path, _, tag, modified = stored
    status, headers, body = get(server, path, {"If-None-Match": value.format(tag=tag)})
    assert_not_modified(status, headers, body, tag, modified)
    status, headers, body = server.request("HEAD", url(path),
                                           headers={"If-None-Match": value.format(tag=tag)})
    assert_not_modified(status, headers, body, tag, modified)
    # A HEAD names the owning instance; an S3 file has none (API.md §3).
    assert headers.get("x-callfs-instance-id") == (None if server.bucket else "node-test")


def test_if_none_match_other_tag_200(server, stored):
    path, content, tag, _ = stored
    for value in ('"0-0-0"', "garbage", tag[:-2] + '"'):
        status, headers, body = get(server, path, {"If-None-Match": value})
        assert status == 200 and body == content, value
    # And a Range still applies after a failed If-None-Match.
    status, _, body = get(server, path, {"If-None-Match": '"0-0-0"', "Range": "bytes=0-3"})
    assert status == 206 and body == content[:4]


def test_stale_cache_gets_the_new_content(server, stored):
    path, _, tag, _ = stored
    assert put(server, path, b"new content")[0] == 200
    status, headers, body = get(server, path, {"If-None-Match": tag})
    assert status == 200 and body == b"new content" and headers["etag"] != tag


def test_if_modified_since(server, stored):
    path, content, tag, modified = stored
    status, headers, body = get(server, path, {"If-Modified-Since": modified})
    assert_not_modified(status, headers, body, tag, modified)
    later = formatdate(time.time() + 3600, usegmt=True)
    assert get(server, path, {"If-Modified-Since": later})[0] == 304
    rfc850 = parsedate_to_datetime(modified).strftime("%A, %d-%b-%y %H:%M:%S GMT")
    assert get(server, path, {"If-Modified-Since": rfc850})[0] == 304
    status, _, body = get(server, path, {"If-Modified-Since": one_second_before(modified)})
    assert status == 200 and body == content
    # Unparsable: ignored.
    assert get(server, path, {"If-Modified-Since": "yesterday"})[0] == 200
    # Ignored when If-None-Match is present (and does not match).
    status, _, _ = get(server, path, {"If-Modified-Since": modified, "If-None-Match": '"0-0-0"'})
    assert status == 200
    assert head(server, path, {"If-Modified-Since": modified})[0] == 304


def test_failed_if_match_on_get_412(server, stored):
    path, content, tag, modified = stored
    status, headers, body = get(server, path, {"If-Match": '"0-0-0"'})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    status, headers, body = get(server, path, {"If-Unmodified-Since": one_second_before(modified)})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    assert head(server, path, {"If-Match": '"0-0-0"'})[0] == 412
    status, _, body = get(server, path, {"If-Match": tag, "If-Unmodified-Since": modified})
    assert status == 200 and body == content
    # A missing file is 404 whatever the conditions.
    assert get(server, path + ".missing", {"If-Match": "*"})[0] == 404


# -- conditional writes --------------------------------------------------------------------------

def assert_unchanged(server, path, content, tag):
    status, headers, body = get(server, path)
    assert status == 200 and body == content and headers["etag"] == tag


def test_put_if_match(server, stored):
    path, content, tag, _ = stored
    status, headers, body = put(server, path, b"lost update", {"If-Match": '"0-0-0"'})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    status, headers, body = put(server, path, b"lost update", {"If-Match": "W/" + tag})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")  # If-Match compares strongly
    assert_unchanged(server, path, content, tag)
    assert put(server, path, b"second", {"If-Match": tag})[0] == 200
    newer = head(server, path)[1]["etag"]
    # The old tag is stale now.
    assert put(server, path, b"third", {"If-Match": tag})[0] == 412
    assert_unchanged(server, path, b"second", newer)
    assert put(server, path, b"third", {"If-Match": f'"0-0-0", {newer}'})[0] == 200
    assert get(server, path)[2] == b"third"


def test_put_if_match_star_updates_only(server, ns):
    path = f"{ns}/only-if-exists"
    status, headers, body = put(server, path, b"x", {"If-Match": "*"})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    assert get(server, path)[0] == 404
    assert put(server, path, b"x")[0] == 201
    assert put(server, path, b"y", {"If-Match": "*"})[0] == 200
    assert get(server, path)[2] == b"y"


def test_put_if_unmodified_since(server, stored):
    path, content, tag, modified = stored
    status, headers, body = put(server, path, b"lost", {"If-Unmodified-Since": one_second_before(modified)})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    assert_unchanged(server, path, content, tag)
    assert put(server, path, b"kept", {"If-Unmodified-Since": modified})[0] == 200
    assert get(server, path)[2] == b"kept"
    # Unparsable dates are ignored; If-Match takes precedence over the date.
    assert put(server, path, b"a", {"If-Unmodified-Since": "never"})[0] == 200
    current = head(server, path)[1]["etag"]
    assert put(server, path, b"b", {"If-Match": current,
                                    "If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})[0] == 200


def test_put_if_none_match(server, stored, ns):
    path, content, tag, _ = stored
    status, headers, body = put(server, path, b"x", {"If-None-Match": "*"})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    status, headers, body = put(server, path, b"x", {"If-None-Match": tag})
    json_error(status, headers, body, 412, "PRECONDITION_FAILED")
    assert put(server, path, b"x", {"If-None-Match": "W/" + tag})[0] == 412  # weak comparison
    assert_unchanged(server, path, content, tag)
    assert put(server, path, b"x", {"If-None-Match": '"0-0-0"'})[0] == 200
    created = f"{ns}/new"
    assert put(server, created, b"fresh", {"If-None-Match": "*"})[0] == 201
    assert get(server, created)[2] == b"fresh"


def test_delete_conditions(server, stored):
    path, content, tag, modified = stored
    for headers in ({"If-Match": '"0-0-0"'}, {"If-Unmodified-Since": one_second_before(modified)},
                    {"If-None-Match": tag}, {"If-None-Match": "*"}):
        status, response_headers, body = server.request("DELETE", url(path), headers=headers)
        json_error(status, response_headers, body, 412, "PRECONDITION_FAILED")
        assert_unchanged(server, path, content, tag)
    assert server.request("DELETE", url(path), headers={"If-Match": tag})[0] == 204
    assert get(server, path)[0] == 404
    assert server.request("DELETE", url(path), headers={"If-Match": tag})[0] == 404


def test_delete_directory_conditions(server, ns):
    directory = f"{ns}/d"
    assert server.request("POST", url(directory) + "/")[0] == 201
    # A directory has no entity tag: only `*` matches it.
    assert server.request("DELETE", url(directory), headers={"If-Match": '"1-1-1"'})[0] == 412
    assert server.request("DELETE", url(directory), headers={"If-Match": "*"})[0] == 204


def test_post_file_conditions(server, ns):
    path = f"{ns}/posted"
    assert server.request("POST", url(path), b"x", headers={"If-Match": "*"})[0] == 412
    assert get(server, path)[0] == 404
    assert server.request("POST", url(path), b"x", headers={"If-None-Match": "*"})[0] == 201
    # An existing file stays a 409 (API.md §9.3).
    assert server.request("POST", url(path), b"y", headers={"If-None-Match": "*"})[0] == 409


def test_permission_is_checked_before_preconditions(server, stored):
    path, content, tag, _ = stored
    status, _, _ = put(server, path, b"x", {"If-Match": '"0-0-0"'}, user="bob")
    assert status == 403
    status, _, _ = server.request("DELETE", url(path), headers={"If-Match": '"0-0-0"'}, user="bob")
    assert status == 403
    assert_unchanged(server, path, content, tag)


def test_stale_put_is_refused_before_the_body(server, stored):
    """With `Expect: 100-continue` the 412 comes instead of `100 Continue`: no body is sent."""
    path, content, tag, _ = stored
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", url(path), KEYS["alice"], headers={
            "Expect": "100-continue", "Content-Length": "50000000", "If-Match": '"0-0-0"'}))
        status, headers, body = conn.read_response()
        assert status == 412
        assert json.loads(body)["code"] == "PRECONDITION_FAILED"
    assert_unchanged(server, path, content, tag)


def test_concurrent_if_match_puts_have_one_winner(server, stored):
    path, _, tag, _ = stored
    bodies = [bytes([65 + i]) * 200_000 for i in range(6)]
    statuses = {}
    barrier = threading.Barrier(len(bodies))

    def writer(index):
        barrier.wait(10)
        statuses[index] = put(server, path, bodies[index], {"If-Match": tag})[0]

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [i for i, status in statuses.items() if status == 200]
    assert len(winners) == 1, statuses
    assert sorted(statuses.values()) == [200] + [412] * (len(bodies) - 1)
    assert get(server, path)[2] == bodies[winners[0]]


def create_only_race(srv, path, count):
    bodies = [f"writer {i} ".encode() * (1000 + i) for i in range(count)]
    statuses = {}
    barrier = threading.Barrier(count)

    def writer(index):
        barrier.wait(10)
        statuses[index] = srv.request("PUT", url(path), bodies[index],
                                      headers={"If-None-Match": "*"})[0]

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [i for i, status in statuses.items() if status == 201]
    assert len(winners) == 1, statuses
    assert sorted(statuses.values()) == [201] + [412] * (count - 1), statuses
    status, _, body = srv.request("GET", url(path))
    assert status == 200 and body == bodies[winners[0]]


def test_create_only_put_has_exactly_one_winner(server, ns):
    for round_ in range(3):
        create_only_race(server, f"{ns}/race-{round_}", 8)


def test_create_only_put_across_workers(launcher):
    srv = launcher(workers=2)
    for round_ in range(3):
        create_only_race(srv, f"/race-{round_}/f", 8)
    assert srv.temporaries() == []
