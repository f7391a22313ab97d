"""No secret ever leaves the server: after a run of requests that touch every kind of failure
(unknown keys, forged and used links, bad paths, bodies and headers, permission denials, early
rejections), no API key, presented key, link token, link secret or internal secret appears in
any log line or in any response body or header."""
import json
import socket

from conftest import INTERNAL_SECRET, KEYS, POSITIONAL_KEY, launch

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
    for secret in secrets:
        assert secret not in log, secret
        assert secret.encode() not in rejected
        for _, headers, body in answers:
            assert secret.encode() not in body, (secret, body[:200])
            assert all(secret not in value for value in headers.values()), secret
