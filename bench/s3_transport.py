"""Two transports for the S3 backend, measured against the same moto server in the same run.

    python bench/s3_transport.py [--size-mib 256] [--turns 3] [--part-mib 16] [--json PATH]

- **executor**: what `callfs/backends/s3.py` does. botocore's client runs each call on the
  backend's own bounded thread pool (`S3Backend(S3Settings(...)).s3`, the backend's call
  helper itself); a download is `S3Backend.open_read` + `S3ReadHandle.chunks` (4 MiB
  `body.read`s, each a `run_in_executor`, one read ahead).
- **own client**: botocore's SigV4 signer only (`S3SigV4Auth`, `x-amz-content-sha256:
  UNSIGNED-PAYLOAD`) over a minimal asyncio HTTP/1.1 client in this file: a Protocol on
  uvloop, httptools' response parser, keep-alive connections (one per request in flight),
  flow control both ways (drain on writes, pause_reading when a body is not taken).

Both run on uvloop and make the same S3 requests in the same order:

1. download: one GET of an object of --size-mib MiB; the bytes are counted and dropped.
2. upload: a multipart upload of --size-mib MiB in --part-mib parts, 3 parts in flight
   (create, the parts, complete); a HEAD then checks the size and ETag.
3. latency: 2000 sequential GETs of a 4 KiB object (open, read the body, done), p50 / p99.

Each turn runs every workload on both transports, in alternating order; a figure is the
median over turns. Read the table's last column as own client / executor: above 1 for MB/s
means the own client is faster, below 1 for latency means it is faster. CPU seconds per run
(this process, all threads; and moto's) say where the time goes: moto is one Python process
on the same machine and often the limit, so a ratio near 1 can mean "moto-bound", not "equal".

Caveat by design: over plain http botocore SHA-256-signs every part it uploads (its
default), the own client sends UNSIGNED-PAYLOAD; the line under the table gives this
machine's SHA-256 rate to size that difference. moto does not check signatures by default
(the signer's Authorization matches botocore's own client for the same request and clock).
moto's werkzeug server answers every request with `Connection: close`: neither transport
reuses connections against it, so each small GET includes a TCP connect on both sides.
moto keeps objects in memory: about 3 x --size-mib of free memory is needed.
"""
import argparse
import asyncio
import collections
import hashlib
import json
import os
import statistics
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape

import httptools
import uvloop
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests", "integration"))
from s3store import ACCESS_KEY, REGION, SECRET_KEY, MotoServer  # noqa: E402

sys.path.insert(0, os.path.dirname(_HERE))
from callfs.backends.s3 import PARTS_IN_FLIGHT, S3Backend, S3Settings  # noqa: E402

MiB = 1 << 20
SMALL = 4096
LATENCY_CALLS = 2000
WARMUP_CALLS = 50
WRITE_PIECE = 1 * MiB  # body bytes handed to the transport before checking its buffer
READ_HIGH = 4 * MiB  # a body buffered beyond this pauses reading (the backend reads 4 MiB)
READ_LOW = 1 * MiB


# -- the own client ------------------------------------------------------------------------

class UnsignedPayloadAuth(S3SigV4Auth):
    """S3's SigV4 with `UNSIGNED-PAYLOAD`: botocore would hash every body over plain http."""

    def _should_sha256_sign_payload(self, request):
        return False


class Signer:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.auth = UnsignedPayloadAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION)

    def headers(self, method: str, target: str, headers: dict) -> list[tuple[str, str]]:
        request = AWSRequest(method=method, url=self.endpoint + target, headers=headers)
        self.auth.add_auth(request)
        return list(request.headers.items())


class Response:
    """One response: status and headers once parsed, then its body as it arrives."""

    def __init__(self, connection: "Connection"):
        self.connection = connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ready = asyncio.get_running_loop().create_future()  # set when headers are in
        self._pieces = collections.deque()
        self._buffered = 0
        self._done = False
        self._error = None
        self._waiter = None

    def _wake(self):
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH:
            self.connection.pause_reading()  # the taker is slower than the socket
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, exc: Exception) -> None:
        self._error = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
        self._wake()

    async def pieces(self):
        while True:
            if self._pieces:
                data = self._pieces.popleft()
                self._buffered -= len(data)
                if self._buffered < READ_LOW and not self._done:
                    self.connection.resume_reading()
                yield data
            elif self._error is not None:
                raise self._error
            elif self._done:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    async def read(self) -> bytes:
        return b"".join([data async for data in self.pieces()])


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; httptools parses."""

    def __init__(self, client: "Client"):
        self.client = client
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self._reading_paused = False
        self._drained = None  # a future while the write buffer is above its high mark

    # asyncio's side
    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=2 * WRITE_PIECE, low=WRITE_PIECE)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(exc)

    def connection_lost(self, exc):
        self._lost(exc or ConnectionError("the server closed the connection"))

    def pause_writing(self):
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _lost(self, exc):
        self.closed = True
        if self.response is not None:
            self.response.fail(exc)
            self.response = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(exc)
        self.transport.close()

    # httptools' side
    def on_header(self, name: bytes, value: bytes):
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self):
        self.response.status = self.parser.get_status_code()
        self.response.ready.set_result(None)

    def on_body(self, body: bytes):
        self.response.feed(body)

    def on_message_complete(self):
        response, self.response = self.response, None
        response.finish()
        # The body is whole: the connection serves the next request whatever is buffered.
        self.resume_reading()
        self.client.release(self, self.parser.should_keep_alive())

    # the client's side
    def pause_reading(self):
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self):
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    async def send(self, head: bytes, body) -> Response:
        self.response = response = Response(self)
        self.transport.write(head)
        if body:
            view = memoryview(body)
            for offset in range(0, len(view), WRITE_PIECE):
                self.transport.write(view[offset:offset + WRITE_PIECE])
                if self._drained is not None:
                    await self._drained
        await response.ready
        return response


class Client:
    """Signed S3 requests over a tiny pool: an idle connection is reused, else one opens."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.signer = Signer(f"http://{host}:{port}")
        self.idle: list[Connection] = []
        self.opened = 0
        self.requests = 0

    async def _connection(self) -> Connection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: Connection(self), self.host, self.port)
        self.opened += 1
        return connection

    def release(self, connection: Connection, keep_alive: bool) -> None:
        if keep_alive and not connection.closed:
            self.idle.append(connection)
        else:
            connection.transport.close()

    async def request(self, method: str, target: str, body=b"") -> Response:
        headers = {"Host": f"{self.host}:{self.port}"}
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in
                  self.signer.headers(method, target, headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        connection = await self._connection()
        self.requests += 1
        response = await connection.send(head, body)
        if response.status >= 300:
            text = (await response.read())[:300].decode("utf-8", "replace")
            raise RuntimeError(f"{method} {target} answered {response.status}: {text}")
        return response

    def close(self) -> None:
        for connection in self.idle:
            connection.transport.close()
        self.idle.clear()


def xml_text(document: bytes, name: str) -> str:
    """The text of the first element `name` of an S3 answer, whatever its namespace."""
    root = ElementTree.fromstring(document)
    if root.tag.rsplit("}", 1)[-1] == "Error":
        raise RuntimeError(f"S3 answered an error: {document[:300]!r}")
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == name:
            return element.text or ""
    raise RuntimeError(f"no {name} in {document[:300]!r}")


# -- the workloads, one function per transport ----------------------------------------------

async def send_parts(send_part, size: int, part: int) -> list[tuple[int, str]]:
    """Every part through `send_part(number, length)` -> ETag, PARTS_IN_FLIGHT at once (as
    S3Upload does); (number, ETag) in order."""
    gate = asyncio.Semaphore(PARTS_IN_FLIGHT)

    async def one(number: int, length: int):
        async with gate:
            return number, await send_part(number, length)

    lengths = [min(part, size - offset) for offset in range(0, size, part)]
    return list(await asyncio.gather(*(one(n, length) for n, length in enumerate(lengths, 1))))


class ExecutorTransport:
    name = "executor"

    def __init__(self, backend: S3Backend):
        self.backend = backend
        self.s3 = backend.s3

    async def download(self, key: str) -> int:
        handle = await self.backend.open_read("/" + key)
        count = 0
        async for data in handle.chunks(0, handle.size):
            count += len(data)
        return count

    async def small(self, key: str) -> bytes:
        handle = await self.backend.open_read("/" + key)
        return b"".join([data async for data in handle.chunks(0, handle.size)])

    async def upload(self, key: str, size: int, part: int, block: bytes) -> str:
        bucket = self.backend.bucket
        created = await self.s3.call("create_multipart_upload", Bucket=bucket, Key=key)
        upload_id = created["UploadId"]

        async def send_part(number: int, length: int) -> str:
            answer = await self.s3.call("upload_part", Bucket=bucket, Key=key,
                                        UploadId=upload_id, PartNumber=number,
                                        Body=block if length == len(block) else block[:length])
            return answer["ETag"]

        parts = await send_parts(send_part, size, part)
        done = await self.s3.call(
            "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})
        return done["ETag"]


class OwnTransport:
    name = "own client"

    def __init__(self, client: Client, bucket: str):
        self.client = client
        self.bucket = bucket

    async def download(self, key: str) -> int:
        response = await self.client.request("GET", f"/{self.bucket}/{key}")
        count = 0
        async for data in response.pieces():
            count += len(data)
        return count

    async def small(self, key: str) -> bytes:
        return await (await self.client.request("GET", f"/{self.bucket}/{key}")).read()

    async def upload(self, key: str, size: int, part: int, block: bytes) -> str:
        path = f"/{self.bucket}/{key}"
        created = await (await self.client.request("POST", path + "?uploads")).read()
        upload_id = urllib.parse.quote(xml_text(created, "UploadId"), safe="-_.~")
        view = memoryview(block)

        async def send_part(number: int, length: int) -> str:
            response = await self.client.request(
                "PUT", f"{path}?partNumber={number}&uploadId={upload_id}", view[:length])
            await response.read()
            return response.headers["etag"]

        parts = await send_parts(send_part, size, part)
        document = ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(e)}</ETag></Part>"
            for n, e in parts) + "</CompleteMultipartUpload>").encode()
        done = await self.client.request("POST", f"{path}?uploadId={upload_id}", document)
        return xml_text(await done.read(), "ETag")


# -- measuring -------------------------------------------------------------------------------

def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, this process's CPU and moto's CPU over a `with` block."""

    def __init__(self, moto_pid: int):
        self.moto_pid = moto_pid

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._moto = process_cpu(self.moto_pid)
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.moto = process_cpu(self.moto_pid) - self._moto


async def run_download(transport, key: str, size: int, moto_pid: int) -> dict:
    with Meter(moto_pid) as meter:
        count = await transport.download(key)
    if count != size:
        raise SystemExit(f"{transport.name}: downloaded {count} of {size} bytes")
    return {"seconds": meter.wall, "cpu": meter.cpu, "moto_cpu": meter.moto}


async def run_upload(transport, backend: S3Backend, key: str, size: int, part: int,
                     block: bytes, moto_pid: int) -> dict:
    with Meter(moto_pid) as meter:
        etag = await transport.upload(key, size, part, block)
    head = await backend.s3.call("head_object", Bucket=backend.bucket, Key=key)
    parts = (size + part - 1) // part
    if (int(head["ContentLength"]) != size or head["ETag"] != etag
            or not etag.strip('"').endswith(f"-{parts}")):
        raise SystemExit(f"{transport.name}: uploaded {head['ContentLength']} bytes, ETag "
                         f"{head['ETag']} (complete said {etag}), expected {size} in {parts}")
    await backend.s3.call("delete_object", Bucket=backend.bucket, Key=key)
    return {"seconds": meter.wall, "cpu": meter.cpu, "moto_cpu": meter.moto}


async def run_latency(transport, key: str, expected: bytes, moto_pid: int) -> dict:
    for _ in range(WARMUP_CALLS):  # connections, threads and caches are in place
        if await transport.small(key) != expected:
            raise SystemExit(f"{transport.name}: the small object's bytes differ")
    samples = []
    with Meter(moto_pid) as meter:
        for _ in range(LATENCY_CALLS):
            started = time.perf_counter_ns()
            await transport.small(key)
            samples.append((time.perf_counter_ns() - started) / 1000)
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_us": cuts[49], "p99_us": cuts[98],
            "cpu_us": meter.cpu / LATENCY_CALLS * 1e6,
            "moto_cpu_us": meter.moto / LATENCY_CALLS * 1e6}


def sha256_rate() -> float:
    """MB/s of hashlib's SHA-256 here: what botocore spends per uploaded byte over http."""
    data = os.urandom(16 * MiB)
    started = time.perf_counter()
    for _ in range(4):
        hashlib.sha256(data).digest()
    return 4 * len(data) / (time.perf_counter() - started) / 1e6


async def bench(args, moto: MotoServer, bucket: str) -> dict:
    size, part = args.size_mib * MiB, args.part_mib * MiB
    host, port = "127.0.0.1", moto.port
    backend = S3Backend(S3Settings(bucket=bucket, region=REGION, endpoint=moto.endpoint,
                                   access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                   server_side_encryption="", acl="", part_size=part))
    await backend.open()
    client = Client(host, port)
    transports = [ExecutorTransport(backend), OwnTransport(client, bucket)]
    # The objects to read: put once, by botocore, outside any measurement.
    block = os.urandom(part)
    small = os.urandom(SMALL)
    big = (block * (size // part + 1))[:size]
    await backend.s3.call("put_object", Bucket=bucket, Key="download", Body=big)
    del big
    await backend.s3.call("put_object", Bucket=bucket, Key="small", Body=small)

    turns = {t.name: collections.defaultdict(list) for t in transports}
    try:
        for turn in range(args.turns):
            order = transports if turn % 2 == 0 else transports[::-1]
            for transport in order:
                turns[transport.name]["download"].append(
                    await run_download(transport, "download", size, moto.process.pid))
            for transport in order:
                key = f"upload-{turn}-{transport.name.replace(' ', '-')}"
                turns[transport.name]["upload"].append(
                    await run_upload(transport, backend, key, size, part, block,
                                     moto.process.pid))
            for transport in order:
                turns[transport.name]["latency"].append(
                    await run_latency(transport, "small", small, moto.process.pid))
            print(f"turn {turn + 1}/{args.turns} done", file=sys.stderr, flush=True)
    finally:
        client.close()
        await backend.close()
    return {"turns": {name: dict(figures) for name, figures in turns.items()},
            "own_connections_opened": client.opened, "own_requests": client.requests}


def summarise(turns: dict, size: int) -> dict:
    """Medians over turns, per transport."""
    summary = {}
    for name, figures in turns.items():
        row = {}
        for workload in ("download", "upload"):
            runs = figures[workload]
            row[f"{workload}_mb_s"] = size / statistics.median(r["seconds"] for r in runs) / 1e6
            row[f"{workload}_cpu_s"] = statistics.median(r["cpu"] for r in runs)
            row[f"{workload}_moto_cpu_s"] = statistics.median(r["moto_cpu"] for r in runs)
        for figure in ("p50_us", "p99_us", "cpu_us", "moto_cpu_us"):
            row[figure] = statistics.median(r[figure] for r in figures["latency"])
        summary[name] = row
    return summary


def print_table(summary: dict, args, connections: int, requests: int) -> None:
    ex, own = summary["executor"], summary["own client"]
    rows = [
        (f"download {args.size_mib} MiB (MB/s)", "download_mb_s", ".0f"),
        (f"multipart upload {args.size_mib} MiB (MB/s)", "upload_mb_s", ".0f"),
        (f"GET {SMALL // 1024} KiB p50 (µs)", "p50_us", ".0f"),
        (f"GET {SMALL // 1024} KiB p99 (µs)", "p99_us", ".0f"),
        ("download: client CPU s / run", "download_cpu_s", ".2f"),
        ("download: moto CPU s / run", "download_moto_cpu_s", ".2f"),
        ("upload: client CPU s / run", "upload_cpu_s", ".2f"),
        ("upload: moto CPU s / run", "upload_moto_cpu_s", ".2f"),
        ("GET: client CPU µs / call", "cpu_us", ".0f"),
        ("GET: moto CPU µs / call", "moto_cpu_us", ".0f"),
    ]
    print("| workload | executor | own client | own / executor |")
    print("|---|---:|---:|---:|")
    for label, field, style in rows:
        ratio = own[field] / ex[field] if ex[field] else float("nan")
        print(f"| {label} | {ex[field]:{style}} | {own[field]:{style}} | {ratio:.2f} |")
    print(f"\n{args.turns} turns, medians; {args.part_mib} MiB parts, {PARTS_IN_FLIGHT} in "
          f"flight; {LATENCY_CALLS} sequential GETs per turn; MB = 10^6 bytes; uvloop.")
    print(f"own client: {connections} connections opened for {requests} requests "
          f"(moto's werkzeug answers `Connection: close`, so with moto neither transport "
          f"reuses a connection).")
    print(f"botocore SHA-256-signs upload payloads over http (this machine hashes "
          f"{sha256_rate():.0f} MB/s); the own client sends UNSIGNED-PAYLOAD.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.part_mib < 5:
        parser.error("S3 parts (but the last) are at least 5 MiB")
    moto = MotoServer(port=None)
    try:
        bucket = "bench-" + uuid.uuid4().hex[:8]
        moto.client().create_bucket(Bucket=bucket)
        started = time.perf_counter()
        result = uvloop.run(bench(args, moto, bucket))
        elapsed = time.perf_counter() - started
    finally:
        moto.stop()
    summary = summarise(result["turns"], args.size_mib * MiB)
    print_table(summary, args, result["own_connections_opened"], result["own_requests"])
    print(f"measured in {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"size_mib": args.size_mib, "part_mib": args.part_mib,
                       "turns": args.turns, "summary": summary, **result}, out, indent=2)


if __name__ == "__main__":
    main()
