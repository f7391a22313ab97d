"""Driving the servers: wrk for the timed runs, http.client for the checks around them.

A number only counts when the server first answered the very same request correctly (status,
size, bytes) and wrk then saw no non-2xx answer: a fast error is not a result.
"""
import hashlib
import json
import os
import resource
import subprocess
from dataclasses import dataclass, field

from servers import BenchError, connection

_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk.lua")
_RESULT_MARK = "callfs-bench-result "
_CHUNK = 1 << 20


@dataclass
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: dict
    latency_us: dict
    cpu_s: float  # CPU time wrk used: near duration x threads, wrk is what limits the run
    argv: list = field(default_factory=list)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def mb_per_s(self) -> float:
        """Bytes received per second, in MB (10^6 bytes); partial responses count too."""
        return self.bytes / self.duration_s / 1e6

    def socket_errors(self) -> int:
        return sum(self.errors[k] for k in ("connect", "read", "write", "timeout"))


def run_wrk(wrk: str, cpus: str, port: int, path: str, method: str, connections: int,
            threads: int, duration: float, key: str, latency_limit: float,
            body_file: str | None = None, targets: int = 0, tls: bool = False) -> WrkResult:
    """One wrk run. latency_limit (s) sizes wrk's latency histogram; slower answers count as
    timeouts, so it must exceed the slowest expected request. tls: an https URL (wrk does
    not verify the certificate)."""
    scheme = "https" if tls else "http"
    argv = ["taskset", "-c", cpus, wrk, f"-t{threads}", f"-c{connections}",
            f"-d{duration:g}s", f"--timeout={latency_limit:g}s", "-s", _SCRIPT,
            "-H", f"Authorization: Bearer {key}", f"{scheme}://127.0.0.1:{port}{path}",
            "--", method]
    if body_file is not None:
        argv += [body_file, str(targets)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    for line in out.stdout.splitlines():
        if line.startswith(_RESULT_MARK):
            raw = json.loads(line[len(_RESULT_MARK):])
            return WrkResult(raw["duration_us"] / 1e6, raw["requests"], raw["bytes"],
                             raw["errors"], raw["latency_us"], cpu, argv)
    raise BenchError(f"wrk failed (exit {out.returncode}):\n{out.stdout}{out.stderr}")


def check_result(server: str, workload: str, result: WrkResult, by_bytes: bool) -> None:
    """by_bytes: the workload is measured in MB/s, where a run of a few huge downloads may
    complete none and still have moved every byte it reports."""
    if result.requests == 0 and not (by_bytes and result.bytes):
        raise BenchError(f"{server}, {workload}: wrk completed no request")
    if result.errors["status"]:
        raise BenchError(f"{server}, {workload}: {result.errors['status']} non-2xx responses "
                         f"out of {result.requests}")


def _headers(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def fetch(port: int, path: str, key: str, method: str = "GET",
          tls=None) -> tuple[int, int, str, dict]:
    """Status, body length, SHA-256 of the body and headers, reading the body in chunks.
    tls: the client context of a TLS server (here and below)."""
    conn = connection(port, tls=tls)
    try:
        conn.request(method, path, headers=_headers(key))
        resp = conn.getresponse()
        digest, length = hashlib.sha256(), 0
        while chunk := resp.read(_CHUNK):
            digest.update(chunk)
            length += len(chunk)
        return resp.status, length, digest.hexdigest(), dict(resp.getheaders())
    finally:
        conn.close()


def upload(port: int, path: str, key: str, source: str, tls=None) -> int:
    """PUT a file's bytes, streamed; returns the status."""
    conn = connection(port, tls=tls)
    try:
        with open(source, "rb") as body:
            headers = _headers(key) | {"Content-Length": str(os.path.getsize(source)),
                                       "Content-Type": "application/octet-stream"}
            conn.request("PUT", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def verify_get(server: str, port: int, path: str, key: str, size: int, sha256: str,
               tls=None) -> None:
    status, length, digest, _ = fetch(port, path, key, tls=tls)
    if status != 200 or length != size or digest != sha256:
        raise BenchError(f"{server}: GET {path} gave {status} with {length} bytes "
                         f"(want 200 with the {size} bytes of the data set)")


def verify_head(server: str, port: int, path: str, key: str, size: int, tls=None) -> None:
    status, length, _, headers = fetch(port, path, key, "HEAD", tls=tls)
    announced = {k.lower(): v for k, v in headers.items()}.get("content-length")
    if status != 200 or length != 0 or announced != str(size):
        raise BenchError(f"{server}: HEAD {path} gave {status}, Content-Length {announced}, "
                         f"{length} body bytes (want 200, {size}, none)")


def verify_put(server: str, port: int, prefix: str, key: str, source: str, targets: int,
               sha256: str) -> None:
    """PUT the body to every target the timed run will use, then read one back."""
    for i in range(targets):
        status = upload(port, f"{prefix}/{i}", key, source)
        if status not in (200, 201, 204):
            raise BenchError(f"{server}: PUT {prefix}/{i} gave {status}")
    verify_get(server, port, f"{prefix}/0", key, os.path.getsize(source), sha256)
