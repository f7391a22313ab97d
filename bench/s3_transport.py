"""Two transports for the S3 backend, measured against the same moto server in the same run.

    python bench/s3_transport.py [--size-mib 256] [--turns 3] [--part-mib 16] [--json PATH]

- **executor**: the transport the backend had before, rebuilt here (self-contained):
  botocore's own client (`create_client("s3")`, s3v4, path style, a pool of 16 connections,
  standard retries, checksums only when required) with every blocking call on a
  ThreadPoolExecutor of 16 threads via `loop.run_in_executor`; a download is a GetObject,
  then its body read as 4 MiB `body.read` calls, each on the executor, one read ahead.
- **own client**: the product's transport itself, `S3Backend(S3Settings(...))` of
  `callfs/backends/s3.py`: `callfs.backends.s3wire.S3Client` (botocore's rest-xml serializer
  and parser, SigV4 with `x-amz-content-sha256: UNSIGNED-PAYLOAD`) over CallFS's own HTTP
  client `callfs/http/client.py` on the event loop, no thread. A download is
  `backend.open_read` + `handle.chunks(0, size)`; multipart calls are `backend.s3.call`.

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
default), the product sends UNSIGNED-PAYLOAD; the line under the table gives this
machine's SHA-256 rate to size that difference. moto does not check signatures by default.
The line under the table also says how many connections each side opened: against a server
that answers `Connection: close`, no transport reuses one, and each small GET then includes
a TCP connect on both sides.
moto keeps objects in memory: about 3 x --size-mib of free memory is needed.
"""
import argparse
import asyncio
import collections
import concurrent.futures
import functools
import hashlib
import json
import os
import statistics
import sys
import time
import uuid

import botocore.session
import uvloop
from botocore.config import Config

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests", "integration"))
from s3store import ACCESS_KEY, REGION, SECRET_KEY, MotoServer  # noqa: E402

sys.path.insert(0, os.path.dirname(_HERE))
from callfs.backends.s3 import PARTS_IN_FLIGHT, S3Backend, S3Settings  # noqa: E402

MiB = 1 << 20
SMALL = 4096
LATENCY_CALLS = 2000
WARMUP_CALLS = 50
THREADS = 16  # the executor's threads, and botocore's connection pool
READ_PIECE = 4 * MiB  # bytes per body.read of the executor side (the previous design's)


# -- the workloads, one class per transport -------------------------------------------------

async def send_parts(send_part, size: int, part: int) -> list[tuple[int, str]]:
    """Every part through `send_part(number, length)` -> ETag, PARTS_IN_FLIGHT at once (as
    S3Upload does); (number, ETag) in order."""
    gate = asyncio.Semaphore(PARTS_IN_FLIGHT)

    async def one(number: int, length: int):
        async with gate:
            return number, await send_part(number, length)

    lengths = [min(part, size - offset) for offset in range(0, size, part)]
    return list(await asyncio.gather(*(one(n, length) for n, length in enumerate(lengths, 1))))


async def multipart_upload(transport, key: str, size: int, part: int, block: bytes) -> str:
    """A multipart upload of `size` bytes (copies of `block`) through `transport.call`,
    in parts of `part` bytes; the object's ETag."""
    bucket = transport.bucket
    created = await transport.call("create_multipart_upload", Bucket=bucket, Key=key)
    upload_id = created["UploadId"]

    async def send_part(number: int, length: int) -> str:
        answer = await transport.call("upload_part", Bucket=bucket, Key=key,
                                      UploadId=upload_id, PartNumber=number,
                                      Body=block if length == len(block) else block[:length])
        return answer["ETag"]

    parts = await send_parts(send_part, size, part)
    done = await transport.call(
        "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})
    return done["ETag"]


class ExecutorTransport:
    """The previous transport: botocore's client, its blocking calls on a thread pool."""

    name = "executor"

    def __init__(self, endpoint: str, bucket: str):
        self.bucket = bucket
        self.client = botocore.session.get_session().create_client(
            "s3", endpoint_url=endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", max_pool_connections=THREADS,
                          retries={"mode": "standard", "max_attempts": 4},
                          s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        self.pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="s3")
        self.requests = 0
        self.connects = self._count_connects()

    def _count_connects(self) -> int:
        """Count this client's TCP connects (urllib3's own count is of connection objects,
        which reconnect in place when the server closes): its pools are made with a
        connection class that counts `_new_conn`. -1 when botocore's internals differ."""
        from botocore.awsrequest import AWSHTTPConnection, AWSHTTPConnectionPool
        transport = self

        class Counting(AWSHTTPConnection):
            def _new_conn(self):
                transport.connects += 1
                return super()._new_conn()

        class CountingPool(AWSHTTPConnectionPool):
            ConnectionCls = Counting

        try:
            manager = self.client._endpoint.http_session._manager
            classes = dict(manager.pool_classes_by_scheme)
        except AttributeError:
            return -1
        classes["http"] = CountingPool
        manager.pool_classes_by_scheme = classes
        return 0

    def run(self, function, *arguments, **keywords):
        return asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(function, *arguments, **keywords))

    def call(self, operation: str, **arguments):
        self.requests += 1
        return self.run(getattr(self.client, operation), **arguments)

    async def chunks(self, key: str):
        """A GetObject, then its body in READ_PIECE reads on the executor, one read ahead."""
        answer = await self.call("get_object", Bucket=self.bucket, Key=key)
        body, left = answer["Body"], int(answer["ContentLength"])
        ahead = self.run(body.read, min(READ_PIECE, left)) if left > 0 else None
        try:
            while left > 0:
                data = await ahead
                if not data:
                    raise OSError(f"S3 ended {key} {left} bytes early")
                left -= len(data)
                ahead = self.run(body.read, min(READ_PIECE, left)) if left > 0 else None
                yield data
        finally:
            if ahead is not None:
                try:
                    await asyncio.shield(ahead)  # its thread is done with the body first
                except BaseException:
                    pass
            body.close()

    async def download(self, key: str) -> int:
        count = 0
        async for data in self.chunks(key):
            count += len(data)
        return count

    async def small(self, key: str) -> bytes:
        return b"".join([data async for data in self.chunks(key)])

    async def upload(self, key: str, size: int, part: int, block: bytes) -> str:
        return await multipart_upload(self, key, size, part, block)

    def connections(self) -> int:
        return self.connects

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


class OwnTransport:
    """The product's transport: S3Backend and its S3Client (s3wire + callfs.http.client)."""

    name = "own client"

    def __init__(self, backend: S3Backend):
        self.backend = backend
        self.bucket = backend.bucket
        self.requests = 0

    def call(self, operation: str, **arguments):
        self.requests += 1
        return self.backend.s3.call(operation, **arguments)

    async def download(self, key: str) -> int:
        self.requests += 1
        handle = await self.backend.open_read("/" + key)
        count = 0
        async for data in handle.chunks(0, handle.size):
            count += len(data)
        return count

    async def small(self, key: str) -> bytes:
        self.requests += 1
        handle = await self.backend.open_read("/" + key)
        return b"".join([data async for data in handle.chunks(0, handle.size)])

    async def upload(self, key: str, size: int, part: int, block: bytes) -> str:
        return await multipart_upload(self, key, size, part, block)

    def connections(self) -> int:
        http = self.backend.s3._http
        return http.opened if http is not None else 0

    def close(self) -> None:
        pass  # the backend is closed by its owner


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


async def run_upload(transport, checker, bucket: str, key: str, size: int, part: int,
                     block: bytes, moto_pid: int) -> dict:
    with Meter(moto_pid) as meter:
        etag = await transport.upload(key, size, part, block)
    # Checked by a third client (plain botocore), outside the measurement and the counts.
    head = await asyncio.to_thread(checker.head_object, Bucket=bucket, Key=key)
    parts = (size + part - 1) // part
    if (int(head["ContentLength"]) != size or head["ETag"] != etag
            or not etag.strip('"').endswith(f"-{parts}")):
        raise SystemExit(f"{transport.name}: uploaded {head['ContentLength']} bytes, ETag "
                         f"{head['ETag']} (complete said {etag}), expected {size} in {parts}")
    await asyncio.to_thread(checker.delete_object, Bucket=bucket, Key=key)
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
    checker = moto.client()  # puts the objects and checks uploads; never measured
    backend = S3Backend(S3Settings(bucket=bucket, region=REGION, endpoint=moto.endpoint,
                                   access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                   server_side_encryption="", acl="", part_size=part))
    await backend.open()
    transports = [ExecutorTransport(moto.endpoint, bucket), OwnTransport(backend)]
    # The objects to read: put once, outside any measurement.
    block = os.urandom(part)
    small = os.urandom(SMALL)
    big = (block * (size // part + 1))[:size]
    await asyncio.to_thread(checker.put_object, Bucket=bucket, Key="download", Body=big)
    del big
    await asyncio.to_thread(checker.put_object, Bucket=bucket, Key="small", Body=small)
    connections_before = {t.name: t.connections() for t in transports}  # (backend.open's)

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
                    await run_upload(transport, checker, bucket, key, size, part, block,
                                     moto.process.pid))
            for transport in order:
                turns[transport.name]["latency"].append(
                    await run_latency(transport, "small", small, moto.process.pid))
            print(f"turn {turn + 1}/{args.turns} done", file=sys.stderr, flush=True)
        connections = {t.name: t.connections() - connections_before[t.name]
                       if connections_before[t.name] >= 0 else -1 for t in transports}
        requests = {t.name: t.requests for t in transports}
    finally:
        for transport in transports:
            transport.close()
        await backend.close()
        checker.close()
    return {"turns": {name: dict(figures) for name, figures in turns.items()},
            "connections_opened": connections, "requests": requests}


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


def print_table(summary: dict, args, connections: dict, requests: dict) -> None:
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
    print("connections opened / requests: " + "; ".join(
        f"{name} {connections[name]} / {requests[name]}" for name in ("executor", "own client"))
        + " (a connection per request means the server closes each one).")
    print(f"botocore SHA-256-signs upload payloads over http (this machine hashes "
          f"{sha256_rate():.0f} MB/s); the own client (the product) sends UNSIGNED-PAYLOAD.")


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
    print_table(summary, args, result["connections_opened"], result["requests"])
    print(f"measured in {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"size_mib": args.size_mib, "part_mib": args.part_mib,
                       "turns": args.turns, "summary": summary, **result}, out, indent=2)


if __name__ == "__main__":
    main()
