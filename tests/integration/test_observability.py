"""Observability against real servers: exact metric deltas through two workers, the metrics
listener, access lines and error records followed by request id, the log's formats, and a log
nobody reads never stalling a request.

Counts aggregate every worker: the known workload below goes over many fresh connections, so
the kernel spreads it over both workers; a scrape through either must see all of it.
"""
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from callfs.observability.metrics import ROUTES, SCHEMA
from conftest import KEYS, free_port, launch, write_config, PACKAGE_HOME

ACCESS_FIELDS = {"ts", "level", "logger", "event", "method", "route", "path", "status",
                 "bytes_in", "bytes_out", "duration_ms", "user", "instance", "request_id",
                 "peer", "transfer"}


def scrape(srv, user="alice") -> dict:
    """{(sample name, frozenset of labels): value} of one /metrics answer."""
    status, headers, body = srv.request("GET", "/metrics", user=user)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(body)


def samples(body: bytes) -> dict:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0)


def delta(before, after, name, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def many(srv, calls, threads=16):
    """Run (method, path, body, headers, user) calls, each on a fresh connection."""
    def one(call):
        method, path, body, headers, user = call
        return srv.request(method, path, body=body, headers=headers, user=user, timeout=30)[0]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, calls))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two workers, and the unauthenticated metrics listener on loopback."""
    metrics_port = free_port()
    srv = launch(tmp_path_factory.mktemp("obs"), workers=2,
                 metrics={"listen_addr": f"127.0.0.1:{metrics_port}"})
    srv.metrics_port = metrics_port
    yield srv
    assert srv.stop() == 0, srv.log()


def test_a_known_workload_is_counted_exactly_across_both_workers(pair):
    srv = pair
    assert srv.request("POST", "/v1/files/obs/", user="alice")[0] == 201
    assert srv.request("PUT", "/v1/files/obs/a.txt", body=b"hello", user="alice")[0] == 201
    before = scrape(srv)
    gets, heads, missing, puts, unauthorized, health = 120, 40, 30, 12, 9, 7
    calls = ([("GET", "/v1/files/obs/a.txt", None, None, "alice")] * gets
             + [("HEAD", "/v1/files/obs/a.txt", None, None, "bob")] * heads
             + [("GET", f"/v1/files/obs/missing-{i}", None, None, "alice")
                for i in range(missing)]
             + [("PUT", "/v1/files/obs/a.txt", b"hello", None, "alice")] * puts
             + [("GET", "/v1/files/obs/a.txt", None, {"Authorization": "Bearer nope"}, None)]
             * unauthorized
             + [("GET", "/health", None, None, None)] * health)
    statuses = many(srv, calls)
    assert statuses.count(200) == gets + heads + puts + health
    assert statuses.count(404) == missing and statuses.count(401) == unauthorized
    after = scrape(srv)
    files = "/v1/files/*"
    assert delta(before, after, "callfs_http_requests_total", method="GET", path=files,
                 status_code="200") == gets
    assert delta(before, after, "callfs_http_requests_total", method="HEAD", path=files,
                 status_code="200") == heads
    assert delta(before, after, "callfs_http_requests_total", method="GET", path=files,
                 status_code="404") == missing
    assert delta(before, after, "callfs_http_requests_total", method="PUT", path=files,
                 status_code="200") == puts
    assert delta(before, after, "callfs_http_requests_total", method="GET", path=files,
                 status_code="401") == unauthorized
    assert delta(before, after, "callfs_http_requests_total", method="GET", path="/health",
                 status_code="200") == health
    # The scrape before is counted once it was answered: the one after sees it.
    assert delta(before, after, "callfs_http_requests_total", method="GET", path="/metrics",
                 status_code="200") == 1
    assert delta(before, after, "callfs_http_request_duration_seconds_count", method="GET",
                 path=files) == gets + missing + unauthorized
    assert delta(before, after, "callfs_http_request_duration_seconds_bucket", method="GET",
                 path=files, le="+Inf") == gets + missing + unauthorized
    assert delta(before, after, "callfs_file_operations_total", operation="read",
                 backend_type="localfs") == gets
    assert delta(before, after, "callfs_file_operations_total", operation="write",
                 backend_type="localfs") == puts
    assert delta(before, after, "callfs_auth_failures_total", reason="unknown_key") \
        == unauthorized
    assert delta(before, after, "callfs_http_response_body_bytes_total", path=files) \
        >= gets * len(b"hello")
    assert delta(before, after, "callfs_http_request_body_bytes_total", path=files) \
        == puts * len(b"hello")
    assert delta(before, after, "callfs_lock_operations_total", operation="acquire",
                 status="success") == puts
    assert delta(before, after, "callfs_lock_operations_total", operation="release",
                 status="success") == puts
    assert value(after, "callfs_active_locks") == 0
    assert value(after, "callfs_http_requests_in_flight") == 1  # the scrape itself
    # Nothing counted twice anywhere: a scrape through the listener sees the same.
    listener = unauthenticated(srv, "GET", "/metrics")
    assert listener[0] == 200
    again = samples(listener[2])
    assert delta(after, again, "callfs_http_requests_total", method="GET", path=files,
                 status_code="200") == 0


def test_distinct_paths_add_no_label_values(pair):
    srv = pair
    many(srv, [("GET", f"/v1/files/obs/n{i}/x", None, None, "alice") for i in range(200)]
         + [("GET", f"/nowhere/{i}", None, None, None) for i in range(20)])
    found = scrape(srv)
    paths = {dict(labels).get("path") for (_, labels) in found if "path" in dict(labels)}
    assert paths <= set(ROUTES)
    assert value(found, "callfs_http_requests_total", method="GET", path="unmatched",
                 status_code="404") >= 20
    # Every family the contract requires is exposed, with its label names.
    names = {name for name, _ in found}
    for required in ("callfs_http_requests_total", "callfs_http_request_duration_seconds_count",
                     "callfs_file_operations_total", "callfs_backend_op_duration_seconds_count",
                     "callfs_single_use_link_generations_total"):
        assert required in names, required
    for (name, labels) in found:
        family = SCHEMA.by_name.get(re.sub(r"_(bucket|sum|count)$", "", name), None) \
            or SCHEMA.by_name[name]
        assert set(dict(labels)) - {"le"} == set(family.label_names), (name, labels)


def unauthenticated(srv, method, path, port=None):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port or srv.metrics_port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_metrics_listener_serves_get_metrics_alone_without_a_key(pair):
    srv = pair
    status, headers, body = unauthenticated(srv, "GET", "/metrics")
    assert status == 200 and b"callfs_http_requests_total" in body
    assert re.fullmatch(r"[0-9a-f]{16}", headers["x-request-id"])
    assert unauthenticated(srv, "POST", "/metrics")[0] == 405
    assert unauthenticated(srv, "GET", "/v1/files/obs/a.txt")[0] == 404
    assert unauthenticated(srv, "GET", "/health")[0] == 404
    # The API port still wants a key.
    assert srv.request("GET", "/metrics", user=None)[0] == 401


def test_link_generations_and_redemptions_are_counted(pair):
    srv = pair
    srv.request("PUT", "/v1/files/obs/linked.txt", body=b"payload", user="alice")
    before = scrape(srv)
    status, _, body = srv.request("POST", "/v1/links/generate",
                                  body=json.dumps({"path": "/obs/linked.txt",
                                                   "expiry_seconds": 60}).encode(),
                                  headers={"Content-Type": "application/json"})
    assert status == 201, body
    token = json.loads(body)["token"]
    assert srv.request("GET", f"/download/{token}", user=None)[:1] == (200,)
    assert srv.request("GET", f"/download/{token}", user=None)[0] != 200  # used
    assert srv.request("GET", "/download/not-a-token", user=None)[0] == 404
    after = scrape(srv)
    assert delta(before, after, "callfs_single_use_link_generations_total") == 1
    assert delta(before, after, "callfs_single_use_link_consumptions_total",
                 status="success") == 1
    assert delta(before, after, "callfs_single_use_link_consumptions_total",
                 status="invalid") == 2
    assert delta(before, after, "callfs_file_operations_total", operation="read",
                 backend_type="localfs") == 1
    # The token never reaches the log.
    time.sleep(0.2)
    assert token not in srv.log() and token.split(".")[0] not in srv.log()
    assert "/download/[redacted]" in srv.log()


def access_lines(srv, request_id):
    return srv.wait_records(lambda r: r.get("logger") == "callfs.access"
                            and r.get("request_id") == request_id)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_access_lines_hold_every_field_on_the_hot_path_and_off_it(pair, method):
    srv = pair
    srv.request("PUT", "/v1/files/obs/hot.txt", body=b"0123456789", user="alice")
    for attempt in range(3):  # the first read fills the cache, later ones are the hot path
        rid = f"trace-{method}-{attempt}"
        status, headers, _ = srv.request(method, "/v1/files/obs/hot.txt",
                                         headers={"X-Request-ID": rid}, user="bob")
        assert status == 200 and headers["x-request-id"] == rid
        (line,) = access_lines(srv, rid)
        assert ACCESS_FIELDS <= set(line)
        assert (line["method"], line["route"], line["path"], line["status"]) == (
            method, "/v1/files/*", "/v1/files/obs/hot.txt", 200)
        assert line["user"] == "bob" and line["instance"] == "node-test"
        assert line["bytes_in"] == 0
        assert line["bytes_out"] == (10 if method == "GET" else 0)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", line["peer"])
        assert line["duration_ms"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
        if method == "GET":
            assert line["transfer"] in ("sendfile", "copy")


def test_uploads_say_how_their_bodies_moved(pair):
    srv = pair
    big = os.urandom(256 * 1024)
    status, headers, _ = srv.request("PUT", "/v1/files/obs/big.bin", body=big,
                                     headers={"X-Request-ID": "upload-big"})
    assert status in (200, 201)
    (line,) = access_lines(srv, "upload-big")
    assert line["bytes_in"] == len(big) and line["transfer"] == "splice"
    status, _, _ = srv.request("GET", "/v1/files/obs/big.bin", headers={"X-Request-ID": "dl-big"})
    (line,) = access_lines(srv, "dl-big")
    assert line["bytes_out"] == len(big) and line["transfer"] == "sendfile"


@pytest.mark.parametrize("given", ["", "a b", "x" * 129, "bad\u00e9"])
def test_an_invalid_request_id_is_replaced(pair, given):
    status, headers, _ = pair.request("GET", "/health", headers={"X-Request-ID": given},
                                      user=None)
    assert status == 200 and re.fullmatch(r"[0-9a-f]{16}", headers["x-request-id"])


def test_a_5xx_is_logged_with_its_request_id_and_the_client_sees_no_detail(pair):
    srv = pair
    srv.request("PUT", "/v1/files/obs/damaged.txt", body=b"recorded", user="alice")
    with open(os.path.join(srv.root, "obs", "damaged.txt"), "wb") as f:
        f.write(b"other bytes on disk")
    status, headers, body = srv.request("GET", "/v1/files/obs/damaged.txt",
                                        headers={"X-Request-ID": "failing-read"})
    assert status == 500 and b"damaged" not in body and b"Traceback" not in body
    errors = srv.wait_records(lambda r: r.get("request_id") == "failing-read"
                              and r.get("level") == "error")
    assert errors and "damaged.txt" in errors[0]["error"]
    (line,) = access_lines(srv, "failing-read")
    assert line["status"] == 500


def test_failed_authentication_is_logged_with_peer_and_reason_never_the_key(pair):
    srv = pair
    presented = "Bearer guess-0123456789abcdefXYZ"
    srv.request("GET", "/v1/files/obs/a.txt", headers={"Authorization": presented,
                                                       "X-Request-ID": "bad-key"}, user=None)
    (record,) = srv.wait_records(lambda r: r.get("request_id") == "bad-key"
                                 and r.get("event") == "authentication failed")
    assert record["reason"] == "unknown_key" and record["peer"] == "127.0.0.1"
    assert "guess-0123456789abcdefXYZ" not in srv.log()


def test_start_up_and_worker_restarts_are_logged_and_counted(pair):
    srv = pair
    serving = srv.wait_records(lambda r: r.get("event") == "serving")
    assert len({r["pid"] for r in serving}) >= 2
    assert srv.wait_records(lambda r: r.get("event") == "started" and r.get("workers") == 2)
    before = scrape(srv)
    victim = serving[-1]["pid"]
    os.kill(victim, 9)
    restarted = srv.wait_records(lambda r: r.get("event") == "worker exited; starting another"
                                 and r.get("pid") == victim)
    assert restarted and restarted[0]["status"] == "killed by SIGKILL"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = scrape(srv)
        if delta(before, after, "callfs_worker_restarts_total") == 1:
            break
        time.sleep(0.1)
    assert delta(before, after, "callfs_worker_restarts_total") == 1
    # The dead worker's counts survive in its slot: nothing went back.
    for key, old in before.items():
        if key[0].endswith("_total") and key[0] != "callfs_http_requests_in_flight":
            assert after.get(key, 0) >= old, key


def test_the_console_format_and_the_access_log_off(tmp_path):
    console = launch(tmp_path / "console", log={"level": "info", "format": "console"})
    quiet = launch(tmp_path / "quiet", log={"level": "warn", "format": "json"})
    try:
        for srv in (console, quiet):
            srv.request("GET", "/health", headers={"X-Request-ID": "fmt-check"}, user=None)
            srv.request("GET", "/v1/files/none", headers={"Authorization": "Bearer wrong-key"},
                        user=None)
        deadline = time.monotonic() + 5
        while "fmt-check" not in console.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        line = next(l for l in console.log().splitlines() if "id=fmt-check" in l)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO access GET /health 200 "
                        r"route=/health in=0 out=15 ms=\d+\.\d{3} user=- id=fmt-check "
                        r"peer=127\.0\.0\.1:\d+ instance=node-test$", line), line
        assert "WARN callfs.http authentication failed" in console.log()
        time.sleep(0.2)
        assert "callfs.access" not in quiet.log() and "fmt-check" not in quiet.log()
        assert "authentication failed" in quiet.log()  # warnings still written
    finally:
        console.stop()
        quiet.stop()


def read_answer(sock) -> bytes:
    """One response with a Content-Length body, read whole."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_log_nobody_reads_drops_lines_and_never_stalls_requests(tmp_path):
    """stderr is a pipe that is not read: the pipe fills, the buffer fills, lines are dropped
    and counted; every request is still answered in time."""
    workdir = tmp_path / "stuck"
    workdir.mkdir()
    port = free_port()
    config = write_config(workdir, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFS_")}
    env["PYTHONPATH"] = PACKAGE_HOME
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "callfs", "server", "-c", config,
                             "--workers", "1"], cwd=str(workdir), stdout=subprocess.DEVNULL,
                            stderr=write_end, env=env)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        # Long targets make long lines: about 12 MiB of access lines, past the 8 MiB buffer.
        target = b"/v1/files/" + b"/".join([b"x" * 250] * 16)
        request = (b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                   + KEYS["alice"].encode() + b"\r\n\r\n")
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(3000):
                sock.sendall(request)
                answer = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
        assert time.monotonic() - started < 60
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                         b"Authorization: Bearer " + KEYS["alice"].encode() + b"\r\n\r\n")
            scraped = b""
            while chunk := sock.recv(65536):
                scraped += chunk
        found = samples(scraped.split(b"\r\n\r\n", 1)[1])
        # The writer reports drops once it catches up; while nobody reads, it never does. Read
        # the pipe now: the drops are counted and said.
        text = b""
        os.set_blocking(read_end, False)
        deadline = time.monotonic() + 10
        while b"log lines dropped" not in text and time.monotonic() < deadline:
            try:
                text += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.02)
        assert b"log lines dropped" in text
        dropped = [json.loads(l) for l in text.splitlines() if b"log lines dropped" in l]
        assert dropped[0]["count"] > 0
        assert value(found, "callfs_http_requests_total", method="GET", path="/v1/files/*",
                     status_code="404") == 3000
    finally:
        proc.terminate()
        try:
            while True:  # keep the pipe drained so the server can finish its last lines
                os.set_blocking(read_end, False)
                try:
                    if not os.read(read_end, 1 << 20):
                        break
                except BlockingIOError:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.02)
        finally:
            proc.wait(30)
            os.close(read_end)
