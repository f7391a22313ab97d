"""Uploads and downloads through CallFS's S3 backend against botocore alone, to the same
S3-compatible server (moto's, on loopback), in the same run.

    python bench/s3.py [--sizes 256,1024] [--turns 3] [--part-mib 16] [--json PATH]

For each size (MiB) and turn, in alternation: botocore alone uploads a file as a multipart
upload with CallFS's part size and parts in flight, then downloads it (one GET, read a MiB at a
time); CallFS (one worker, `default_backend: s3`) takes a PUT of the same file and answers a
GET of it. Each figure is a median over the turns; the table gives MB/s both ways, the ratio
CallFS / botocore, and CallFS's peak RSS while the transfer ran (sampled every 20 ms), which
should not grow with the size. moto keeps objects in memory: the machine needs a few GiB.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests", "integration"))
from s3store import ACCESS_KEY, REGION, SECRET_KEY, MotoServer  # noqa: E402

sys.path.insert(0, os.path.dirname(_HERE))
from callfs.backends.s3 import PARTS_IN_FLIGHT  # noqa: E402

MiB = 1 << 20
KEY = "bench-key-0123456789abcdef"


def make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, f"payload-{size // MiB}")
    block = os.urandom(MiB)
    with open(path, "wb") as out:
        for _ in range(size // MiB):
            out.write(block)
    return path


class Rss:
    """Peak resident memory of a process while a `with` block runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._read())

    def __enter__(self):
        self.peak = self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def botocore_upload(client, bucket: str, key: str, path: str, part: int) -> float:
    size = os.path.getsize(path)
    started = time.perf_counter()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def send(number: int, offset: int):
        with open(path, "rb") as source:
            source.seek(offset)
            data = source.read(part)
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                    PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    with concurrent.futures.ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
        parts = list(pool.map(send, range(1, (size + part - 1) // part + 1),
                              range(0, size, part)))
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    return time.perf_counter() - started


def botocore_download(client, bucket: str, key: str) -> float:
    started = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    while body.read(MiB):
        pass
    return time.perf_counter() - started


class Node:
    """One `callfs server` (one worker) whose new files go to the bucket."""

    def __init__(self, workdir: str, moto: MotoServer, bucket: str, part: int):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = os.path.join(workdir, "config.yaml")
        q = json.dumps
        with open(config, "w") as out:
            out.write("\n".join([
                "server:", f"  listen_addr: {q(f'127.0.0.1:{self.port}')}",
                '  protocol: "http"',
                "auth:", "  api_key_users:", f"    bench: {q(KEY)}",
                '  internal_proxy_secret: "bench-internal-secret-0123456789"',
                '  single_use_link_secret: "bench-link-secret-0123456789"',
                "backend:", '  default_backend: "s3"', f"  s3_bucket_name: {q(bucket)}",
                f"  s3_endpoint: {q(moto.endpoint)}", f"  s3_region: {q(REGION)}",
                f"  s3_access_key: {q(ACCESS_KEY)}", f"  s3_secret_key: {q(SECRET_KEY)}",
                f"  s3_part_size: {q(f'{part // MiB}MiB')}",
                f"  localfs_root_path: {q(os.path.join(workdir, 'files'))}",
                "metadata_store:", '  type: "sqlite"',
                f"  sqlite_path: {q(os.path.join(workdir, 'metadata.sqlite3'))}",
                "dlm:", '  type: "local"', "metrics:", '  listen_addr: ""',
                "log:", '  level: "warn"', ""]))
        self.log = open(os.path.join(workdir, "server.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "callfs", "server", "-c", config,
                                      "--workers", "1"], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("callfs did not start; see " + self.log.name)
            time.sleep(0.1)
        self.worker = self._worker_pid()

    def _worker_pid(self) -> int:
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        return int(children[0]) if children else self.proc.pid

    def request(self, method: str, path: str, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, body=body,
                         headers=dict({"Authorization": f"Bearer {KEY}"}, **(headers or {})))
            response = conn.getresponse()
            read = 0
            while True:
                piece = response.read(MiB)
                if not piece:
                    break
                read += len(piece)
            return response.status, read
        finally:
            conn.close()

    def upload(self, path: str, name: str) -> float:
        started = time.perf_counter()
        with open(path, "rb") as source:
            status, _ = self.request("PUT", f"/v1/files/{name}", body=source,
                                     headers={"Content-Length": str(os.path.getsize(path))})
        if status not in (200, 201):
            raise SystemExit(f"PUT answered {status}")
        return time.perf_counter() - started

    def download(self, name: str, size: int) -> float:
        started = time.perf_counter()
        status, read = self.request("GET", f"/v1/files/{name}")
        if status != 200 or read != size:
            raise SystemExit(f"GET answered {status} with {read} of {size} bytes")
        return time.perf_counter() - started

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,1024", help="MiB, comma-separated")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(s) * MiB for s in args.sizes.split(",")]
    part = args.part_mib * MiB
    moto = MotoServer()
    client = moto.client()
    bucket = "bench-" + uuid.uuid4().hex[:8]
    client.create_bucket(Bucket=bucket)
    results = []
    with tempfile.TemporaryDirectory(prefix="callfs-s3-bench-") as work:
        node = Node(work, moto, bucket, part)
        try:
            for size in sizes:
                path = make_file(work, size)
                figures = {"boto_up": [], "boto_down": [], "callfs_up": [], "callfs_down": [],
                           "rss_up": [], "rss_down": []}
                for turn in range(args.turns):
                    key = f"boto-{size}-{turn}"
                    figures["boto_up"].append(botocore_upload(client, bucket, key, path, part))
                    figures["boto_down"].append(botocore_download(client, bucket, key))
                    client.delete_object(Bucket=bucket, Key=key)
                    name = f"callfs-{size}-{turn}"
                    with Rss(node.worker) as rss:
                        figures["callfs_up"].append(node.upload(path, name))
                    figures["rss_up"].append(rss.peak)
                    with Rss(node.worker) as rss:
                        figures["callfs_down"].append(node.download(name, size))
                    figures["rss_down"].append(rss.peak)
                    node.request("DELETE", f"/v1/files/{name}")
                os.unlink(path)
                row = {"size_mib": size // MiB}
                for name, times in figures.items():
                    value = statistics.median(times)
                    row[name] = value / MiB if name.startswith("rss") else size / value / 1e6
                row["up_ratio"] = row["callfs_up"] / row["boto_up"]
                row["down_ratio"] = row["callfs_down"] / row["boto_down"]
                results.append(row)
        finally:
            node.stop()
            moto.stop()
    print(f"| size | botocore up | CallFS up | up ratio | botocore down | CallFS down | "
          f"down ratio | CallFS peak RSS up / down |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['size_mib']} MiB | {row['boto_up']:.0f} MB/s | {row['callfs_up']:.0f} MB/s"
              f" | {row['up_ratio']:.2f} | {row['boto_down']:.0f} MB/s | "
              f"{row['callfs_down']:.0f} MB/s | {row['down_ratio']:.2f} | "
              f"{row['rss_up']:.0f} / {row['rss_down']:.0f} MiB |")
    print(f"\n{args.turns} turns each, medians; part size {args.part_mib} MiB, "
          f"{PARTS_IN_FLIGHT} parts in flight; MB = 10^6 bytes.")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
