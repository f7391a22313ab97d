"""Link downloads against keyed GETs of the same file, on one CallFS server, in one run.

    python bench/links.py --callfs PATH [--smoke] [--duration SECONDS] [--json PATH]

A link can be redeemed once, and downloads are rate-limited per client address (API.md §11:
five at once, ten a second), so the client here, not wrk, drives both kinds the same way: every
connection comes from a loopback address of its own and carries at most five requests. The
keyed GETs follow the same pattern, so the two differ only in what the server does per request
(a link: check the token, mark it used in the metadata store, open the file). Tokens are made
before the timed part. The two kinds alternate (keyed, link, keyed, link) and each figure is
the sum over its runs. Prints one line per file size with the ratio link / keyed.
"""
import argparse
import asyncio
import itertools
import json
import os
import secrets
import sys
import tempfile
import time

import loadgen
from servers import CallFS

KiB, MiB = 1 << 10, 1 << 20
PER_CONNECTION = 5  # the download limit's burst
_addresses = itertools.count(1)


def fresh_ip() -> str:
    n = next(_addresses)
    return f"127.{(n >> 16) % 250 + 1}.{(n >> 8) & 255}.{n & 255}"


async def _response(reader) -> tuple[int, int]:
    """(status, body bytes) of one response, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    left = length
    while left:
        chunk = await reader.read(min(left, MiB))
        if not chunk:
            raise ConnectionError("closed mid-body")
        left -= len(chunk)
    return status, length


async def drive(port: int, targets, connections: int, seconds: float) -> dict:
    """Requests for `targets` (an iterator of request bytes) on `connections` at a time for
    `seconds` (or until the targets run out): requests, bytes, elapsed, failures."""
    done = {"requests": 0, "bytes": 0, "failures": 0}
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    async def worker():
        while time.monotonic() < deadline:
            batch = list(itertools.islice(targets, PER_CONNECTION))
            if not batch:
                return
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(fresh_ip(), 0))
            try:
                for request in batch:
                    writer.write(request)
                    status, length = await _response(reader)
                    if status != 200:
                        done["failures"] += 1
                    done["requests"] += 1
                    done["bytes"] += length
            finally:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    done["elapsed_s"] = time.monotonic() - started
    return done


def request(path: str, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


async def make_tokens(port: int, key: str, path: str, count: int) -> list[str]:
    """`count` links to `path`, generated from many addresses (one link per 10 ms each)."""
    body = json.dumps({"path": path, "expiry_seconds": 3600}).encode()
    post = (f"POST /v1/links/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
    tokens: list[str] = []

    async def worker(share: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(fresh_ip(), 0))
        try:
            for _ in range(share):
                writer.write(post)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                answer = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 201"):
                    raise RuntimeError(f"link generation answered {head[:12]!r} {answer!r}")
                tokens.append(json.loads(answer)["token"])
                await asyncio.sleep(0.011)
        finally:
            writer.close()

    parallel = 64
    await asyncio.gather(*(worker(count // parallel + (i < count % parallel))
                           for i in range(parallel)))
    return tokens


async def compare(port: int, key: str, path: str, size: int, connections: int,
                  seconds: float, rounds: int, tokens_per_round: int) -> dict:
    keyed = {"requests": 0, "bytes": 0, "failures": 0, "elapsed_s": 0.0}
    linked = dict(keyed)
    for _ in range(rounds):
        tokens = await make_tokens(port, key, path, tokens_per_round)
        keyed_requests = itertools.repeat(request("/v1/files" + path, key))
        for total, result in ((keyed, await drive(port, keyed_requests, connections, seconds)),
                              (linked, await drive(port, (request("/download/" + t)
                                                          for t in tokens),
                                                   connections, seconds))):
            for field in total:
                total[field] += result[field]
    row = {"file_bytes": size, "connections": connections}
    for name, total in (("keyed", keyed), ("link", linked)):
        rate = total["requests"] / total["elapsed_s"]
        row[name] = {**total, "req_per_s": round(rate, 1),
                     "mb_per_s": round(total["bytes"] / total["elapsed_s"] / 1e6, 1)}
    row["link_per_keyed"] = round(row["link"]["req_per_s"] / row["keyed"]["req_per_s"], 3)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/links.py", description=__doc__.split("\n")[0])
    p.add_argument("--callfs", default="callfs")
    p.add_argument("--smoke", action="store_true", help="tiny run: 16 MiB stands in for 256 MiB")
    p.add_argument("--duration", type=float, help="seconds per run (default 3; 0.5 with --smoke)")
    p.add_argument("--json", help="where to write the raw numbers")
    args = p.parse_args(argv)
    seconds = args.duration or (0.5 if args.smoke else 3.0)
    large = 16 * MiB if args.smoke else 256 * MiB
    plans = [("64k", 64 * KiB, 16, 4000 if not args.smoke else 400),
             ("256m" if not args.smoke else "16m", large, 2, 40 if not args.smoke else 8)]
    cpus = sorted(os.sched_getaffinity(0))
    key = secrets.token_urlsafe(24)
    rows = []
    with tempfile.TemporaryDirectory(prefix="callfs-bench-links-") as tmp:
        server = CallFS(args.callfs, os.path.join(tmp, "data"), key, tmp, str(cpus[0]))
        server.start()
        try:
            for name, size, connections, per_round in plans:
                source = os.path.join(tmp, name)
                with open(source, "wb") as f:
                    f.write(os.urandom(MiB) * (size // MiB) if size >= MiB else os.urandom(size))
                path = f"/bench/{name}"
                if loadgen.upload(server.port, "/v1/files" + path, key, source) not in (200, 201):
                    raise RuntimeError(f"uploading {path} failed")
                row = asyncio.run(compare(server.port, key, path, size, connections, seconds,
                                          2, per_round))
                row["file"] = name
                rows.append(row)
                failures = row["keyed"]["failures"] + row["link"]["failures"]
                print(f"link download vs keyed GET, {name}, {connections} conns: "
                      f"keyed {row['keyed']['req_per_s']:,.0f} req/s "
                      f"({row['keyed']['mb_per_s']:,.0f} MB/s), link "
                      f"{row['link']['req_per_s']:,.0f} req/s "
                      f"({row['link']['mb_per_s']:,.0f} MB/s): link/keyed "
                      f"{row['link_per_keyed']:.2f}" + (f"; {failures} FAILED" if failures else ""))
                if failures:
                    return 1
        finally:
            server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
