"""The load suite: CallFS against nginx and against the Python ceiling, in one table.

    ci/bench.sh [--duration SECONDS] [--smoke] [--only a,b,...] [--json PATH]

ci/bench.sh builds the patched wrk, installs CallFS, and runs this file with what it found
(--wrk, --nginx, --callfs, --ceiling). docs/benchmarks.md describes each workload and how to
read the table. Servers run one at a time, except that CallFS with and without its access log
take turns; every wait has a deadline; any wrong answer, or a log that did not get a line per
request, fails the run.
"""
import argparse
import dataclasses
import datetime
import hashlib
import http.client
import os
import random
import secrets
import signal
import sys
import tempfile
import time

import accesslog
import loadgen
import report
from servers import (BenchError, CallFS, Ceiling, CpuSnapshot, Nginx, RssSampler, Server,
                     make_certificate, negotiated, rss_kib, version)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# The data set: name (the last URL segment everywhere) -> size.
SIZES = {"4k": 4 * KiB, "64k": 64 * KiB, "1m": MiB, "16m": 16 * MiB, "256m": 256 * MiB,
         "1g": GiB}
URL_PREFIX = "/v1/files/bench"
PUT_PREFIX = URL_PREFIX + "/put"
PUT_TARGETS = 32  # distinct paths the PUT run rotates over, so it is not one lock's queue
GROUPS = "abcdefwt"


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str  # unique: "a", "c-1g", "w-a"
    group: str  # the letter --only selects
    title: str
    method: str
    file: str  # data-set name: what GET/HEAD fetch, or the PUT body
    connections: int
    by_bytes: bool = False  # reported in MB/s rather than requests/s
    rss: bool = False  # peak RSS goes into the table
    ceiling: bool = True  # the ceiling can serve it (GET/HEAD of a file <= 1 MiB)
    workers: int = 1  # 2: the unpinned run with two server processes
    tls: bool = False  # over TLS (https), against nginx with the same certificate and suites

    @property
    def path(self) -> str:
        return PUT_PREFIX if self.method == "PUT" else f"{URL_PREFIX}/{self.file}"

    @property
    def latency(self) -> bool:
        return self.connections == 1


def workloads(smoke: bool, only: set[str]) -> list[Workload]:
    large = "16m" if smoke else "256m"
    large_title = "16 MiB (stands in for 256 MiB)" if smoke else "256 MiB"
    chosen = [
        Workload("a", "a", "GET 4 KiB, 64 conns", "GET", "4k", 64),
        Workload("b", "b", "GET 64 KiB, 64 conns", "GET", "64k", 64),
        Workload("c", "c", f"GET {large_title}, 4 conns", "GET", large, 4, by_bytes=True,
                 rss=True, ceiling=False),
    ]
    if not smoke:
        chosen.append(Workload("c-1g", "c", "GET 1 GiB, 4 conns", "GET", "1g", 4,
                               by_bytes=True, rss=True, ceiling=False))
    chosen += [
        Workload("d", "d", "HEAD 4 KiB, 64 conns", "HEAD", "4k", 64),
        Workload("e", "e", "PUT 1 MiB, 16 conns", "PUT", "1m", 16, rss=True, ceiling=False),
        Workload("f", "f", "GET 4 KiB, 1 conn", "GET", "4k", 1),
        Workload("t-a", "t", "TLS GET 4 KiB, 64 conns", "GET", "4k", 64, ceiling=False,
                 tls=True),
        Workload("t-c", "t", f"TLS GET {large_title}, 4 conns", "GET", large, 4,
                 by_bytes=True, rss=True, ceiling=False, tls=True),
    ]
    if not smoke:
        chosen.append(Workload("t-c-1g", "t", "TLS GET 1 GiB, 4 conns", "GET", "1g", 4,
                               by_bytes=True, rss=True, ceiling=False, tls=True))
    if not smoke:
        chosen += [
            Workload("w-a", "w", "GET 4 KiB, 64 conns, 2 workers", "GET", "4k", 64, workers=2),
            Workload("w-b", "w", "GET 64 KiB, 64 conns, 2 workers", "GET", "64k", 64,
                     workers=2),
        ]
    return [w for w in chosen if w.group in only]


# -- the data set -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class File:
    path: str
    size: int
    sha256: str


def build_dataset(directory: str, names: set[str]) -> dict[str, File]:
    """Incompressible, reproducible bytes: one random MiB, repeated for the large files."""
    os.makedirs(directory)
    block = random.Random(2026).randbytes(MiB)
    files = {}
    for name in sorted(names, key=SIZES.__getitem__):
        size, path, digest = SIZES[name], os.path.join(directory, name), hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                piece = block[:min(left, MiB)]
                f.write(piece)
                digest.update(piece)
                left -= len(piece)
        files[name] = File(path, size, digest.hexdigest())
    return files


def link_tree(files: dict[str, File], directory: str, names) -> None:
    """Hard links: nginx and the ceiling serve the data set's own inodes (one page cache)."""
    os.makedirs(directory, exist_ok=True)
    for name in names:
        os.link(files[name].path, os.path.join(directory, name))


def prepare(tmp: str, chosen: list[Workload]) -> dict[str, File]:
    """The data set, and the trees nginx and the ceiling serve it from (CallFS gets it later,
    through its API)."""
    names = {w.file for w in chosen}
    print(f"-- data set: {', '.join(sorted(names, key=SIZES.__getitem__))}", file=sys.stderr)
    files = build_dataset(os.path.join(tmp, "data"), names)
    served = [n for n in names if n != "1m"]  # 1m is only ever a PUT body
    link_tree(files, os.path.join(tmp, "nginx-root", URL_PREFIX[1:]), served)
    os.makedirs(os.path.join(tmp, "nginx-root", PUT_PREFIX[1:]))
    link_tree(files, os.path.join(tmp, "ceiling-files"), [n for n in served if SIZES[n] <= MiB])
    return files


# -- one server's session ---------------------------------------------------------------------

@dataclasses.dataclass
class Context:
    wrk: str
    key: str
    files: dict[str, File]
    duration: float
    warmup: float
    load_cpus: str
    all_cpus: str
    results: list
    notes: list
    turns: int = 1  # timed runs per workload of each CallFS server of a pair
    negotiated: dict = dataclasses.field(default_factory=dict)  # server name -> TLS version, suite


def load_callfs(server: CallFS, ctx: Context, names: set[str]) -> None:
    """Put the data set into CallFS through its API, unless an earlier session did."""
    for name in sorted(names, key=SIZES.__getitem__):
        file, path = ctx.files[name], f"{URL_PREFIX}/{name}"
        status, _, _, headers = loadgen.fetch(server.port, path, ctx.key, "HEAD", server.tls)
        announced = {k.lower(): v for k, v in headers.items()}.get("content-length")
        if status == 200 and announced == str(file.size):
            continue
        status = loadgen.upload(server.port, path, ctx.key, file.path, server.tls)
        if status not in (200, 201):
            raise BenchError(f"{server.name}: loading PUT {path} gave {status}")


def verify(server: Server, w: Workload, ctx: Context) -> None:
    file = ctx.files[w.file]
    if w.method == "GET":
        loadgen.verify_get(server.name, server.port, w.path, ctx.key, file.size, file.sha256,
                           server.tls)
    elif w.method == "HEAD":
        loadgen.verify_head(server.name, server.port, w.path, ctx.key, file.size, server.tls)
    else:
        loadgen.verify_put(server.name, server.port, w.path, ctx.key, file.path, PUT_TARGETS,
                           file.sha256)


def wrk(server: Server, w: Workload, ctx: Context, duration: float) -> loadgen.WrkResult:
    pinned = w.workers == 1
    file = ctx.files[w.file]
    body = (file.path, PUT_TARGETS) if w.method == "PUT" else (None, 0)
    # Latency histogram bound: a 1 GiB download takes seconds, a 4 KiB one milliseconds.
    limit = ctx.duration + 60 if w.by_bytes else 10.0
    return loadgen.run_wrk(ctx.wrk, ctx.load_cpus if pinned else server.cpus, server.port,
                           w.path, w.method, w.connections, 1 if pinned else 2, duration,
                           ctx.key, limit, *body, tls=w.tls)


@dataclasses.dataclass
class Observed:
    """What the harness saw of the machine during a timed run, beside wrk's own numbers."""
    rss_idle_kib: int
    rss_peak_kib: int
    rss_samples: int
    server_cpu_s: float
    # Shares of time: the server's and wrk's CPUs busy (by anything), all CPUs stolen.
    cpu_busy: dict
    other_cpu_s: float  # CPU time of processes that are neither the server nor the suite
    other_processes: dict  # the three that used most (at least 0.1 s)


def timed_run(server: Server, w: Workload,
              ctx: Context) -> tuple[loadgen.WrkResult, Observed]:
    members = server.process.members()
    idle, before = rss_kib(members), CpuSnapshot()
    with RssSampler(server.process) as rss:
        result = wrk(server, w, ctx, ctx.duration)
    after = CpuSnapshot()
    lost = set(members) - set(server.process.members())
    if lost:  # a crashed worker that a supervisor replaced would otherwise go unnoticed
        raise BenchError(f"{server.name}: process(es) {sorted(lost)} exited during {w.key}:\n"
                         f"{server.process.log_tail()}")
    load_cpus = ctx.load_cpus if w.workers == 1 else server.cpus
    busy = {"server_cpus": after.share_since(before, server.cpus),
            "load_cpus": after.share_since(before, load_cpus),
            "stolen": after.share_since(before, ctx.all_cpus, stolen=True)}
    # wrk started after the first snapshot and is gone by the second: it is not counted.
    others = after.others_since(before, set(members) | {os.getpid()})
    top = dict(sorted(((k, v) for k, v in others.items() if v >= 0.1),
                      key=lambda item: -item[1])[:3])
    return result, Observed(idle, rss.peak_kib, rss.samples,
                            round(after.seconds_since(before, members), 2), busy,
                            round(sum(others.values()), 2), top)


def caveats(w: Workload, result: loadgen.WrkResult, seen: Observed) -> list[str]:
    """What a reader of one run's number must know."""
    found = []
    if result.socket_errors():
        found.append(f"socket errors {result.errors}")
    if seen.other_cpu_s > 0.05 * result.duration_s:
        names = ", ".join(f"{k} {v:.1f} s" for k, v in seen.other_processes.items())
        found.append(f"other processes used {seen.other_cpu_s:.1f} s of CPU during the run"
                     f"{f' ({names})' if names else ''}: the number may be low")
    busy = seen.cpu_busy
    if busy["stolen"] > 0.05:
        found.append(f"the hypervisor took {busy['stolen']:.0%} of the CPUs' time during the "
                     "run: the number may be low")
    # Pinned, each side has a CPU of its own: the one near 100 % busy is what limited the run.
    wrk_share = result.cpu_s / result.duration_s
    if w.workers == 1 and (wrk_share > 0.9 or busy["load_cpus"] > 0.9
                           and busy["server_cpus"] < 0.8):
        found.append(f"wrk used {wrk_share:.0%} of a CPU, its CPU was {busy['load_cpus']:.0%} "
                     f"busy, the server's {busy['server_cpus']:.0%}: the number may be the "
                     "client's limit")
    return found


def check_access_log(server: Server, w: Workload, result: loadgen.WrkResult,
                     ctx: Context) -> accesslog.Tally | None:
    """What the server's access log received during the timed run, which must be about a line
    per request when it logs, and nothing when it does not; lines it dropped go into a note."""
    log = server.access_log
    if log is None:
        return None
    logged = log.count()
    problem = accesslog.problem(server.logs_access, result.requests, logged)
    if problem:
        raise BenchError(f"{server.name}, {w.key}: {problem}\n{server.process.log_tail()}")
    # Counted: the lines' write-back must not fall into another run.
    log.empty()
    if logged.dropped:
        ctx.notes.append(f"{server.name}, {w.key}: the server reported {logged.dropped:,} "
                         f"access lines dropped of {logged.lines + logged.dropped:,} "
                         f"({logged.dropped / (logged.lines + logged.dropped):.1%})")
    return logged


def measure(server: Server, w: Workload, ctx: Context) -> dict:
    """Check the answer, warm up, then time one workload on one server: one row of results."""
    verify(server, w, ctx)
    if ctx.warmup:
        loadgen.check_result(server.name, w.key, wrk(server, w, ctx, ctx.warmup), w.by_bytes)
    if w.method == "PUT":
        # Start with no dirty pages from earlier writes, and leave none behind: the kernel's
        # write-back would otherwise slow down whichever run comes next.
        os.sync()
    if server.access_log is not None:
        server.access_log.begin()
    result, seen = timed_run(server, w, ctx)
    loadgen.check_result(server.name, w.key, result, w.by_bytes)
    logged = check_access_log(server, w, result, ctx)
    if w.method == "PUT":
        os.sync()
    ctx.notes += [f"{server.name}, {w.key}: {n}" for n in caveats(w, result, seen)]
    size = ctx.files[w.file].size
    # PUT: the payload is the request bodies sent; otherwise what wrk received.
    mb = result.requests * size / result.duration_s / 1e6 if w.method == "PUT" \
        else result.mb_per_s
    return {
        "workload": w.key, "title": w.title, "server": server.column,
        "variant": server.variant, "workers": server.workers, "server_cpus": server.cpus,
        "load_cpus": ctx.load_cpus if w.workers == 1 else server.cpus,
        "wrk_argv": [a.replace(ctx.key, "KEY") for a in result.argv],
        "method": w.method, "path": w.path, "file_bytes": size,
        "connections": w.connections, "duration_s": round(result.duration_s, 3),
        "requests": result.requests, "bytes": result.bytes,
        "req_per_s": round(result.req_per_s, 1), "mb_per_s": round(mb, 1),
        "latency_us": result.latency_us, "errors": result.errors,
        "wrk_cpu_s": round(result.cpu_s, 2), **dataclasses.asdict(seen),
        "tls": ctx.negotiated.get(server.name) if w.tls else None,
        # Whether it logged each request, and what its access log received during the run.
        "access_log": None if logged is None else {"on": server.logs_access,
                                                   **logged.as_dict()},
    }


def run_session(servers: list[Server], chosen: list[Workload], ctx: Context) -> None:
    """One server, or CallFS with and without its access log: both run, and take turns at
    each workload (`--turns` each, in alternating order), so that each ratio is of runs
    seconds apart."""
    started: list[Server] = []
    current = servers[0]
    try:
        for current in servers:
            print(f"-- {current.name}, {current.workers} worker(s) on CPU {current.cpus}",
                  file=sys.stderr)
            started.append(current)
            current.start()
            if current.tls is not None:
                ctx.negotiated[current.name] = found = negotiated(current.port, current.tls)
                print(f"   TLS: {found['version']}, {found['cipher']}", file=sys.stderr)
                seen = {(v["version"], v["cipher"]) for v in ctx.negotiated.values()}
                if len(seen) > 1:
                    ctx.notes.append("the TLS servers negotiated different suites: "
                                     f"{ctx.negotiated}")
            if isinstance(current, CallFS):
                load_callfs(current, ctx, {w.file for w in chosen if w.method != "PUT"})
        if any(isinstance(s, CallFS) for s in servers):
            # The data set was just written: let its write-back finish before anything is
            # timed, or it competes with the first runs for the CPUs.
            os.sync()
        turns = ctx.turns if len(servers) > 1 else 1
        for i, w in enumerate(chosen):
            for turn in range(turns):
                for current in servers if (i + turn) % 2 == 0 else servers[::-1]:
                    row = measure(current, w, ctx)
                    row["turn"] = turn
                    ctx.results.append(row)
                    label = current.name if len(servers) > 1 else ""
                    print(f"   {w.key:5} {w.title:40} {report.summary(row)}"
                          + (f"  [{label}]" if label else ""), file=sys.stderr)
    except (OSError, http.client.HTTPException) as exc:
        # Usually the server died or hung up: its log says why.
        raise BenchError(f"{current.name}: {exc!r}\n"
                         f"{current.process.log_tail() if current.process else ''}") from exc
    finally:
        for server in started:
            server.stop()


# -- the whole run ----------------------------------------------------------------------------

def plan(args, chosen: list[Workload], tmp: str, key: str, cpus: dict) -> list:
    """(servers, workloads) in the order they run: one session at a time, of one server, or of
    CallFS with and without its access log."""
    pinned = [w for w in chosen if w.workers == 1]
    doubled = [w for w in chosen if w.workers == 2]
    nginx_root = os.path.join(tmp, "nginx-root")
    sessions, n = [], 0

    def workdir(name):
        nonlocal n
        n += 1
        return os.path.join(tmp, f"{n:02}-{name}")

    def ceiling(mode, cpu):
        return [Ceiling(sys.executable, args.ceiling, os.path.join(tmp, "ceiling-files"),
                        workdir("ceiling"), cpu, mode)]

    def callfs(name, cpu, **kw):
        """CallFS as configured by default, and the same build with its access log off: two
        servers alive at once, so each has a data directory of its own."""
        return [CallFS(args.callfs, os.path.join(tmp, "callfs-data"), key, workdir(name), cpu,
                       **kw),
                CallFS(args.callfs, os.path.join(tmp, "callfs-data-log-off"), key,
                       workdir(name + "-log-off"), cpu, access_log=False, **kw)]

    tls = [w for w in pinned if w.tls]
    pinned = [w for w in pinned if not w.tls]
    if pinned:
        cpu = cpus["server"]
        sessions.append(([Nginx(args.nginx, nginx_root, workdir("nginx"), cpu)], pinned))
        small = [w for w in pinned if w.ceiling]
        if args.ceiling and small:
            sessions += [(ceiling("bytes", cpu), small), (ceiling("sendfile", cpu), small)]
        sessions.append((callfs("callfs", cpu), pinned))
        puts = [w for w in pinned if w.method == "PUT"]
        if puts:
            sessions.append((callfs("callfs", cpu, fsync=True), puts))
    if tls:
        # One certificate for both, made for this run.
        cert, cpu = make_certificate(os.path.join(tmp, "tls")), cpus["server"]
        sessions.append(([Nginx(args.nginx, nginx_root, workdir("nginx-tls"), cpu,
                                certificate=cert)], tls))
        sessions.append((callfs("callfs-tls", cpu, certificate=cert), tls))
    if doubled:
        cpu = cpus["all"]
        sessions.append(([Nginx(args.nginx, nginx_root, workdir("nginx"), cpu, workers=2)],
                         doubled))
        if args.ceiling:
            sessions.append((ceiling("bytes", cpu), doubled))
        sessions.append((callfs("callfs", cpu, workers=2), doubled))
    return sessions


def choose_cpus() -> dict:
    """Servers on the first CPU this process may use, wrk on the second."""
    allowed = sorted(os.sched_getaffinity(0))
    return {"server": str(allowed[0]), "load": str(allowed[1 if len(allowed) > 1 else 0]),
            "all": ",".join(map(str, allowed)), "shared": len(allowed) < 2}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ci/bench.sh", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, metavar="SECONDS", help="seconds per timed run "
                   "(default 10; 1 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny run that only proves the "
                   "machinery works: short runs, small files, no 1 GiB, no 2-worker run")
    p.add_argument("--only", metavar="LETTERS", help="comma-separated workload letters "
                   f"({','.join(GROUPS)}; w = the 2-worker run, t = the TLS rows)")
    p.add_argument("--turns", type=int, default=1, metavar="N", help="timed runs of each "
                   "workload for CallFS with and for CallFS without its access log, in "
                   "alternation; the table shows medians (default 1)")
    p.add_argument("--json", metavar="PATH", help="where to write the raw results (default: "
                   "bench/results/bench-<time>.json)")
    # Filled in by ci/bench.sh.
    p.add_argument("--wrk", default="wrk", help=argparse.SUPPRESS)
    p.add_argument("--nginx", default="nginx", help=argparse.SUPPRESS)
    p.add_argument("--callfs", default="callfs", help=argparse.SUPPRESS)
    p.add_argument("--ceiling", default="", help=argparse.SUPPRESS)
    # ci/bench.sh checks the arguments before its slow steps.
    p.add_argument("--check-args", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.smoke else 10.0
    if args.duration <= 0:
        p.error("--duration must be positive")
    if args.turns < 1:
        p.error("--turns must be 1 or more")
    args.only = set(GROUPS) if not args.only else set(args.only.replace(" ", "").split(","))
    if not args.only <= set(GROUPS):
        p.error(f"--only takes letters from {','.join(GROUPS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    json_path = args.json or os.path.join(repo, "bench", "results", started.strftime(
        "bench-%Y%m%dT%H%M%SZ") + ("-smoke" if args.smoke else "") + ".json")
    chosen = workloads(args.smoke, args.only)
    if not chosen:
        print("nothing to run: --only selects no workload of this mode", file=sys.stderr)
        return 2
    if args.check_args:
        return 0
    if args.ceiling and not os.path.isfile(args.ceiling):
        args.ceiling = ""
    cpus = choose_cpus()
    # The harness itself (checks, RSS sampling) stays off the servers' CPU.
    os.sched_setaffinity(0, {int(cpus["load"])})
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    key = secrets.token_urlsafe(24)
    ctx = Context(args.wrk, key, {}, args.duration, 0.0 if args.smoke else 1.0,
                  cpus["load"], cpus["all"], [], [], args.turns)
    if not args.ceiling:
        ctx.notes.append("ceiling: pyceiling.py not found (set CALLFS_CEILING); column empty")
    if cpus["shared"]:
        ctx.notes.append("only one CPU available: servers and wrk share it")
    error = None
    begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callfs-bench-") as tmp:
        try:
            ctx.files = prepare(tmp, chosen)
            for servers, session_workloads in plan(args, chosen, tmp, key, cpus):
                run_session(servers, session_workloads, ctx)
        except BenchError as exc:
            error = str(exc)
    environment = report.environment(repo, cpus, {
        "nginx": version([args.nginx, "-v"], "nginx version: "),
        "wrk": version([args.wrk, "-v"], "wrk ").split(" [")[0],
        "callfs": version([args.callfs, "--version"], "callfs "),
        "python": sys.version.split()[0],
    })
    document = report.document(args, started, time.monotonic() - begin, environment, ctx,
                               chosen, error)
    report.write_json(json_path, document)
    print(report.render(document))
    print(f"raw results: {json_path} ({document['elapsed_s']:.0f} s)", file=sys.stderr)
    if error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
