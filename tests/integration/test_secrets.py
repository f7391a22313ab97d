"""No secret ever leaves the server: after a run of requests that touch every kind of failure
(unknown keys, forged and used links, bad paths, bodies and headers, permission denials, early
rejections), no API key, presented key, link token, link secret or internal secret appears in
any log line, in any response body or header, or in /metrics; nor does a database password."""
import json
import socket

import pytest

from conftest import INTERNAL_SECRET, KEYS, POSITIONAL_KEY, SERVICES_UP, free_port, launch

LINK_SECRET = "link-secret-0123456789"
WRONG_KEY = "wrong-key-that-is-long-enough-0001"


def test_no_secret_in_logs_or_answers(tmp_path):
    srv = launch(tmp_path / "srv", log={"level": "debug", "format": "json"})
    answers = []

    def req(method, path, body=None, headers=None, user="alice"):
        answer = srv.request(method, path, body=body, headers=headers, user=user)
        answers.append(answer)
        return answer

    try:
        req("PUT", "/v1/files/s/f.txt", b"data")
        req("GET", "/v1/files/s/f.txt", user=WRONG_KEY)
        req("GET", "/v1/files/s/f.txt", headers={"Authorization": "bearer " + KEYS["alice"]})
        req("GET", "/v1/files/s/f.txt", headers={"Authorization": "Basic " + KEYS["bob"]})
        req("GET", "/v1/files/" + KEYS["alice"])  # a key as a path
        req("GET", "/v1/files/s/%zz" + INTERNAL_SECRET)
        req("PATCH", "/v1/files/s/f.txt", body=b"{" + KEYS["bob"].encode())
        req("PATCH", "/v1/files/s/f.txt", body=json.dumps({"owner": "mallory"}).encode())
        req("PUT", "/v1/files/s/g", body=b"x", headers={"X-CallFS-Mode": KEYS["bob"],
                                                        "X-CallFS-Group": "nogroup"})
        req("DELETE", "/v1/files/s/f.txt", user="bob")
        status, _, body = req("POST", "/v1/links/generate",
                              body=json.dumps({"path": "/s/f.txt", "expiry_seconds": 60}).encode())
        assert status == 201, body
        answers.pop()  # the one answer that carries the token: the link itself
        token = json.loads(body)["token"]
        assert req("GET", "/download/" + token, user=None)[0] == 200
        assert req("GET", "/download/" + token, user=None)[0] == 410
        forged = token[:30] + ("A" if token[30] != "A" else "B") + token[31:]
        req("GET", "/download/" + forged, user=None)
        req("GET", "/download/" + token + "x", user=None)
        req("POST", "/v1/links/generate", body=json.dumps({"path": token}).encode())
        req("GET", "/metrics")
        req("GET", "/metrics", user=WRONG_KEY)
        # An early rejection (a head the parser refuses) with a key in it.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"GET /v1/files/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                         + WRONG_KEY.encode() + b"\r\nContent-Length: 1\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            rejected = sock.recv(65536)
        assert rejected.startswith(b"HTTP/1.1 400")
    finally:
        assert srv.stop() == 0
    secrets = [*KEYS.values(), POSITIONAL_KEY, INTERNAL_SECRET, LINK_SECRET, WRONG_KEY, token,
               token.split(".")[1], forged]
    log = srv.log()
    assert "request failed" in log or "serving" in log  # the log was written
    # The access log writes each target as asked: two of the requests above put a key in the
    # path themselves (a name the server cannot know is secret). Those two lines aside, no
    # secret appears; a link's token, which the server does know, never does.
    chosen = [KEYS["alice"], INTERNAL_SECRET]
    targets = [json.loads(line)["path"] for line in log.splitlines()
               if '"logger":"callfs.access"' in line]
    assert sum(any(key in target for key in chosen) for target in targets) == 2
    assert not any(token in target or forged in target for target in targets)
    others = "\n".join(line for line in log.splitlines()
                       if not any(key in line for key in chosen)
                       or '"logger":"callfs.access"' not in line)
    for secret in secrets:
        assert secret not in others, secret
        assert secret.encode() not in rejected
        for _, headers, body in answers:
            assert secret.encode() not in body, (secret, body[:200])
            assert all(secret not in value for value in headers.values()), secret


DSN_PASSWORD = "pg-password-0123456789"


def test_no_secret_in_logs_or_metrics_with_a_postgres_password(tmp_path, database):
    """A DSN with a password (trust authentication ignores it), the metrics listener on
    loopback, the console format too: neither the password nor any key or token is logged or
    exposed in /metrics, through the API port or the listener."""
    if not SERVICES_UP:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (run ci/services.sh)")
    dsn = database.replace("postgres@", f"postgres:{DSN_PASSWORD}@", 1)
    metrics_port = free_port()
    for fmt in ("json", "console"):
        srv = launch(tmp_path / fmt, workers=2, log={"level": "debug", "format": fmt},
                     metadata_store={"type": "postgres", "dsn": dsn},
                     metrics={"listen_addr": f"127.0.0.1:{metrics_port}"})
        try:
            srv.request("PUT", "/v1/files/p/f.txt", body=b"data")
            srv.request("GET", "/v1/files/p/f.txt", user=WRONG_KEY)
            status, _, body = srv.request(
                "POST", "/v1/links/generate",
                body=json.dumps({"path": "/p/f.txt", "expiry_seconds": 60}).encode())
            assert status == 201, body
            token = json.loads(body)["token"]
            assert srv.request("GET", "/download/" + token, user=None)[0] == 200
            scraped = [srv.request("GET", "/metrics")[2],
                       srv.request("GET", "/metrics", user=INTERNAL_SECRET)[2]]
            with socket.create_connection(("127.0.0.1", metrics_port), timeout=5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                listener = b""
                while chunk := sock.recv(65536):
                    listener += chunk
            scraped.append(listener)
        finally:
            assert srv.stop() == 0
        log = srv.log()
        assert "callfs.access" in log or " access " in log  # the access log was written
        for secret in [DSN_PASSWORD, *KEYS.values(), POSITIONAL_KEY, INTERNAL_SECRET,
                       LINK_SECRET, WRONG_KEY, token, token.split(".")[0]]:
            assert secret not in log, (fmt, secret)
            for body in scraped:
                assert secret.encode() not in body, (fmt, secret)
        assert all(b"callfs_http_requests_total" in body for body in scraped)


def test_a_store_that_cannot_be_reached_says_so_without_its_password(tmp_path):
    dsn = f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(RuntimeError) as failed:
        launch(tmp_path / "down", metadata_store={"type": "postgres", "dsn": dsn})
    message = str(failed.value)
    assert "metadata store" in message and DSN_PASSWORD not in message
