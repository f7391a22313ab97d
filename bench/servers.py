"""The servers the load suite compares: nginx, the Python ceiling, and CallFS.

Each one runs in a session of its own (so that stopping it reaches its workers too), on
127.0.0.1 only, on the CPUs it is given through taskset. The harness starts one at a time.
"""
import dataclasses
import http.client
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time

from accesslog import CALLFS_ACCESS, CALLFS_DROPPED, CALLFS_QUIET, AccessLog

READY_SECONDS = 30.0
STOP_SECONDS = 35.0  # CallFS drains for at most 30 s on SIGTERM
RSS_INTERVAL = 0.05
_MEMBERS_EVERY = 20  # re-list a server's processes once a second (workers may be replaced)
_TAIL_BYTES = 4 << 20  # how much of the end of a log the tail of a failure is looked for in

_HERE = os.path.dirname(os.path.abspath(__file__))


class BenchError(Exception):
    """A failure that makes the run's numbers meaningless: the run stops and exits non-zero."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection(port: int, timeout: float = 120.0,
               tls: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    # Large uploads go out in 1 MiB writes instead of http.client's default 8 KiB.
    if tls is not None:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                           blocksize=1 << 20, context=tls)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, blocksize=1 << 20)


@dataclasses.dataclass(frozen=True)
class Certificate:
    """The run's self-signed certificate for 127.0.0.1: nginx and CallFS serve the same one."""
    cert: str
    key: str

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert)


def make_certificate(directory: str) -> Certificate:
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot make the TLS certificate with openssl: {exc}") from exc
    return Certificate(cert, key)


def negotiated(port: int, tls: ssl.SSLContext) -> dict:
    """What a default client gets from the server: the TLS version and the cipher suite."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with tls.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            return {"version": sock.version(), "cipher": sock.cipher()[0]}


class Process:
    """A server process and everything it forks, kept together as one process group. Its
    stdout and stderr go to `log_path`; `chatter` marks the lines a failure's tail leaves out
    (access lines, which would bury the error)."""

    def __init__(self, argv: list[str], log_path: str, cwd: str | None = None,
                 chatter: bytes | None = None):
        self.log_path = log_path
        self.chatter = chatter
        # Appending: each worker's write lands at the end, and the harness may empty the file
        # between runs (accesslog.py).
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=cwd,
                                          start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def members(self) -> list[int]:
        """Every live process of the group, zombies left out (found by scanning /proc: not every
        kernel has /proc/PID/task/TID/children)."""
        return [pid for pid, (_, fields) in _processes().items()
                if int(fields[2]) == self.pid and fields[0] != b"Z"]

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
                found = f.read().splitlines()
        except OSError:
            return ""
        if self.chatter is not None:
            found = [line for line in found if self.chatter not in line]
        return b"\n".join(found[-lines:]).decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after the drain deadline."""
        for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self.members():
                    # Reap it now: a late reap would add its CPU time to wrk's (RUSAGE_CHILDREN).
                    self.popen.wait(timeout=5)
                    return
                time.sleep(0.05)
        raise BenchError(f"server process group {self.pid} survived SIGKILL")


def _processes() -> dict[int, tuple[str, list[bytes]]]:
    """pid -> (command name, the fields of /proc/PID/stat after the name: state, ppid, pgrp...)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while listing
        # The name is parenthesised and may itself contain spaces or parentheses.
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode("utf-8", "replace")
        found[int(entry)] = (name, stat[stat.rindex(b")") + 2:].split())
    return found


def cpu_jiffies() -> dict[str, tuple[int, int, int]]:
    """CPU number -> (busy, total, stolen) jiffies from /proc/stat. Busy counts interrupts and
    softirqs too, where much of loopback networking is done; stolen is time the hypervisor
    gave to another machine."""
    found = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                # user nice system idle iowait irq softirq steal
                ticks = [int(v) for v in values[:8]]
                found[name[3:]] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks), ticks[7])
    return found


class CpuSnapshot:
    """CPU time used so far, by every process and by every CPU. Two snapshots around a run
    tell what the server used, how busy each CPU was, and who else was running."""

    def __init__(self):
        # pid -> (name, ppid, utime + stime): fields 4, 14 and 15 of /proc/PID/stat
        self.processes = {pid: (name, int(f[1]), int(f[11]) + int(f[12]))
                          for pid, (name, f) in _processes().items()}
        self.cpus = cpu_jiffies()

    def seconds_since(self, before: "CpuSnapshot", pids) -> float:
        """CPU time the given processes used between `before` and this snapshot."""
        ticks = sum(self.processes[p][2] - before.processes[p][2] for p in pids
                    if p in self.processes and p in before.processes)
        return ticks / os.sysconf("SC_CLK_TCK")

    def share_since(self, before: "CpuSnapshot", cpus: str, stolen: bool = False) -> float:
        """The share of time the CPUs of a taskset list ("0" or "0,1") were busy, by anything
        at all (or, with stolen, taken away by the hypervisor)."""
        part = total = 0
        for cpu in cpus.split(","):
            part += self.cpus[cpu][2 if stolen else 0] - before.cpus[cpu][2 if stolen else 0]
            total += self.cpus[cpu][1] - before.cpus[cpu][1]
        return round(part / total, 3) if total else 0.0

    def others_since(self, before: "CpuSnapshot", ours: set[int]) -> dict[str, float]:
        """CPU seconds of the processes that are not ours: on a shared machine they, not the
        servers, may be why a number is low. Kernel threads (children of kthreadd, pid 2) are
        left out: ksoftirqd does the servers' own networking."""
        hz = os.sysconf("SC_CLK_TCK")
        found = {}
        for pid, (name, ppid, ticks) in self.processes.items():
            if pid in ours or pid == 2 or ppid == 2 or pid not in before.processes:
                continue
            used = (ticks - before.processes[pid][2]) / hz
            if used > 0:
                found[f"{name} ({pid})"] = round(used, 2)
        return found


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass  # exited between listing and reading
    return total


class RssSampler(threading.Thread):
    """Peak resident memory of a server, summed over its processes, sampled every 50 ms."""

    def __init__(self, process: Process):
        super().__init__(daemon=True)
        self.process = process
        self.peak_kib = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        pids: list[int] = []
        tick = 0
        while True:
            if tick % _MEMBERS_EVERY == 0:
                pids = self.process.members()
            self.peak_kib = max(self.peak_kib, rss_kib(pids))
            self.samples += 1
            tick += 1
            if self._done.wait(RSS_INTERVAL):
                return

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self.join()


class Server:
    """One configured server: start, wait until it answers, stop. Subclasses build argv."""

    column = ""  # which column of the table: nginx, ceiling or callfs
    access_log: AccessLog | None = None  # where it logs each request, if it does
    logs_access = False  # whether it should

    def __init__(self, workdir: str, cpus: str, workers: int = 1, variant: str = "",
                 certificate: Certificate | None = None):
        self.workdir = workdir
        self.cpus = cpus
        self.workers = workers
        self.variant = variant
        self.certificate = certificate  # serve TLS with it
        self.tls = certificate.client() if certificate is not None else None
        self.port = 0  # chosen at start, so that it is still free then
        self.process: Process | None = None

    @property
    def name(self) -> str:
        name = f"{self.column} ({self.variant})" if self.variant else self.column
        return name + " over TLS" if self.certificate is not None else name

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        return "/"

    @property
    def chatter(self) -> bytes | None:
        """What marks the lines of server.log a failure's tail leaves out."""
        return None

    def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.port = free_port()
        argv = ["taskset", "-c", self.cpus] + self.argv()
        self.process = Process(argv, os.path.join(self.workdir, "server.log"), cwd=self.workdir,
                               chatter=self.chatter)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until any HTTP answer comes back (the ready path's status is checked by the caller)."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise BenchError(f"{self.name} exited at start:\n{self.process.log_tail()}")
            try:
                conn = connection(self.port, timeout=2.0, tls=self.tls)
                conn.request("GET", self.ready_path())
                status = conn.getresponse().status
                conn.close()
                if status == 200 or self.ready_path() == "/":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer within {READY_SECONDS:.0f} s:\n"
                         f"{self.process.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


class Nginx(Server):
    """nginx with the DAV module: static GET/HEAD with sendfile, PUT into the document root."""

    column = "nginx"

    def __init__(self, binary: str, root: str, workdir: str, cpus: str, workers: int = 1,
                 certificate: Certificate | None = None):
        super().__init__(workdir, cpus, workers, certificate=certificate)
        self.binary = binary
        self.root = root
        # nginx's default: the combined format, a write per request (no buffer).
        self.access_log = AccessLog(os.path.join(workdir, "access.log"))
        self.logs_access = True

    def argv(self) -> list[str]:
        with open(os.path.join(_HERE, "nginx.conf.in")) as f:
            text = f.read()
        # Workers of a root master switch to "nobody", who could not write the PUT targets.
        user = "user root;" if os.geteuid() == 0 else ""
        ssl_listen, tls = "", ""
        if self.certificate is not None:
            # CallFS's own protocols and TLS 1.2 suites (TLS 1.3: OpenSSL's defaults, as in
            # CallFS), the same certificate.
            from callfs.http.tls import CIPHERS

            ssl_listen = " ssl"
            tls = "\n".join([f"ssl_certificate {self.certificate.cert};",
                              f"ssl_certificate_key {self.certificate.key};",
                              "ssl_protocols TLSv1.2 TLSv1.3;", f"ssl_ciphers {CIPHERS};"])
        for field, value in (("@USER@", user), ("@WORKERS@", str(self.workers)),
                             ("@TMP@", self.workdir), ("@PORT@", str(self.port)),
                             ("@ACCESS_LOG@", self.access_log.path),
                             ("@ROOT@", self.root), ("@SSL@", ssl_listen), ("@TLS@", tls)):
            text = text.replace(field, value)
        conf = os.path.join(self.workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text)
        # -e: nginx opens its error log before reading the configuration; keep it here too.
        return [self.binary, "-p", self.workdir + "/", "-c", conf,
                "-e", os.path.join(self.workdir, "error.log")]


class Ceiling(Server):
    """The bare uvloop + httptools server (shared/bench/pyceiling.py): files <= 1 MiB only."""

    column = "ceiling"

    def __init__(self, python: str, script: str, files: str, workdir: str, cpus: str,
                 mode: str):
        super().__init__(workdir, cpus, 1, variant=mode)
        self.python = python
        self.script = script
        self.files = files

    def argv(self) -> list[str]:
        return [self.python, self.script, str(self.port), self.files, "--mode", self.variant]


class CallFS(Server):
    """`callfs server` with a single-node SQLite configuration written for the run. Its logs
    are the default ones (level info, JSON: a line per request), on stderr, to server.log;
    with `access_log=False`, level warn: the same build without its access log."""

    column = "callfs"

    def __init__(self, binary: str, data: str, key: str, workdir: str, cpus: str,
                 workers: int = 1, fsync: bool = False, certificate: Certificate | None = None,
                 access_log: bool = True):
        super().__init__(workdir, cpus, workers, "fsync on" if fsync else "fsync off",
                         certificate)
        self.binary = binary
        self.data = data
        self.key = key
        self.fsync = fsync
        self.logs_access = access_log
        self.access_log = AccessLog(os.path.join(workdir, "server.log"), CALLFS_ACCESS,
                                    CALLFS_DROPPED, CALLFS_QUIET)

    @property
    def name(self) -> str:
        name = f"{self.column} ({self.variant}{'' if self.logs_access else ', log off'})"
        return name + " over TLS" if self.certificate is not None else name

    def ready_path(self) -> str:
        return "/health"

    @property
    def chatter(self) -> bytes | None:
        return CALLFS_ACCESS

    def config(self) -> str:
        """The YAML configuration; every value is written as a JSON string or literal."""
        q = json.dumps
        if self.certificate is None:
            tls = ['  protocol: "http"', f"  external_url: {q(f'http://127.0.0.1:{self.port}')}"]
        else:
            tls = ['  protocol: "https"', f"  external_url: {q(f'https://127.0.0.1:{self.port}')}",
                   f"  cert_file: {q(self.certificate.cert)}",
                   f"  key_file: {q(self.certificate.key)}"]
        return "\n".join([
            "server:",
            f"  listen_addr: {q(f'127.0.0.1:{self.port}')}",
            *tls,
            "auth:",
            "  api_key_users:",
            f"    bench: {q(self.key)}",
            f"  internal_proxy_secret: {q(secrets.token_urlsafe(32))}",
            f"  single_use_link_secret: {q(secrets.token_urlsafe(32))}",
            # The default log (info, JSON) is left as it is; warn leaves out the access lines.
            *([] if self.logs_access else ["log:", '  level: "warn"']),
            "metrics:",
            '  listen_addr: ""',  # the default :9090 would listen on every interface
            "backend:",
            f"  localfs_root_path: {q(os.path.join(self.data, 'files'))}",
            f"  localfs_fsync: {'true' if self.fsync else 'false'}",
            "metadata_store:",
            '  type: "sqlite"',
            f"  sqlite_path: {q(os.path.join(self.data, 'metadata.sqlite3'))}",
            "dlm:",
            '  type: "local"',
            "instance_discovery:",
            '  instance_id: "bench"',
            "",
        ])

    def argv(self) -> list[str]:
        path = os.path.join(self.workdir, "config.yaml")
        with open(path, "w") as f:
            f.write(self.config())
        return [self.binary, "server", "-c", path, "--workers", str(self.workers)]


def version(argv: list[str], prefix: str) -> str:
    """First line a program prints about its version (nginx and wrk use stderr)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].removeprefix(prefix) if lines else "unknown"
