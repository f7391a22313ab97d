"""`callfs server`: prepare once, then serve from N worker processes sharing the port.

The master checks what can fail without changing anything (this build serves the
configuration, the certificates load, the address is free), then locks the data directory
(`callfs.datadir`: a second server on the same data is refused before it creates anything),
then prepares (secrets, local root, store reachable and migrated), recovers writes a crash
interrupted, and only then forks. Each worker binds its own SO_REUSEPORT socket, so the
kernel spreads connections. A worker that dies is replaced; a worker whose master dies goes
with it. SIGTERM/SIGINT drain every worker within the deadline and exit 0.
"""
import asyncio
import ctypes
import hashlib
import logging
import os
import random
import signal
import socket
import ssl
import sys
import tempfile
import time

import uvloop

from callfs import config, datadir
from callfs._native.ratelimit import RateLimiter
from callfs.api.directories import DirectoriesAPI
from callfs.api.files import FilesAPI
from callfs.api.links import LinksAPI
from callfs.api.system import SystemAPI
from callfs.api.transfer import TransferAPI
from callfs.backends.localfs import LocalFSBackend
from callfs.backends.peer import PeerBackend
from callfs.backends.s3 import S3Backend, S3Settings
from callfs.domain import errors
from callfs.core.engine import Engine, recover
from callfs.core.links import Links
from callfs.core.links import sweep_forever as sweep_links_forever
from callfs.core.permissions import Accounts, Rules
from callfs.http import tls
from callfs.http.auth import Authenticator
from callfs.http.hotpath import hot_path
from callfs.http.protocol import HttpProtocol
from callfs.http.router import HSTS, SECURITY_HEADERS, MetricsRouter, Router
from callfs.http.sending import FILE_CHUNK
from callfs.locks.local import LocalLockManager
from callfs.locks.redis import RedisLockManager
from callfs.metadata.cache import CachedStore, open_table
from callfs.metadata.measured import MeasuredStore
from callfs.metadata.postgres import PostgresStore
from callfs.metadata.sqlite import SQLiteStore
from callfs.observability import logging as structured
from callfs.observability import metrics as measures

log = logging.getLogger("callfs.server")

DRAIN_SECONDS = 30.0
RECOVERY_INTERVAL = 300.0  # seconds between looks for crash leftovers while serving
RECOVERY_MIN_AGE = 60.0
# When this server started (set before the workers fork): a leftover older than that is a
# previous process's, never a write in flight.
_started_ns = 0
_data_lock: datadir.DataLock | None = None  # held for the life of the master, and its workers
_limits: RateLimiter | None = None  # API.md §11's buckets: one table for every worker
_tls_context: ssl.SSLContext | None = None  # the master's, inherited by its workers
_tally = None  # the instance's counts (callfs/observability/metrics.py): slot 0 the master's
_log: structured.Log | None = None
tls_downloads: str | None = None  # how TLS downloads travel, for the start-up summary
GIL_SWITCH_SECONDS = 0.0002
IDLE_SECONDS = 120.0
_RESTART_WINDOW = 10.0
_RESTART_LIMIT = 10
_PR_SET_PDEATHSIG = 1  # prctl(2), linux/prctl.h


class StartupError(Exception):
    pass


class ServerState:
    """What every connection of one worker shares."""

    def __init__(self, app, loop, *, tls: bool, read_timeout: float, write_timeout: float,
                 metrics, access=None, hot=None):
        self.app = app
        self.hot = hot
        self.metrics = metrics  # Metrics, for this process's slot
        self.access = access    # the access log's LogSink, or None when it is off
        self.loop = loop
        self.tls = tls
        self.read_timeout = max(read_timeout, 0.0)
        self.write_timeout = max(write_timeout, 0.0)
        self.idle_timeout = IDLE_SECONDS
        self.connections: set[HttpProtocol] = set()
        self.draining = False

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_deadlines(now)


# -- preparation (master) --------------------------------------------------------------------

def _ssl_context(cfg) -> ssl.SSLContext | None:
    """The API port's TLS context (callfs/http/tls.py), or None for plain HTTP. Built by the
    master before it forks: the workers inherit it, session-ticket keys included."""
    if not config.uses_tls(cfg.server):
        return None
    try:
        return tls.server_context(cfg.server.cert_file, cfg.server.key_file)
    except tls.CertificateError as exc:
        raise StartupError(f"cannot load the TLS certificate: {exc}") from None


def listen_socket(addr: str, *, bind_only: bool = False) -> socket.socket:
    host, port = config.split_host_port(addr)  # validated: it parses
    try:
        if host is None:
            family, address = (socket.AF_INET6, ("::", port)) if socket.has_ipv6 else (
                socket.AF_INET, ("0.0.0.0", port))
        else:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            family, address = info[0], info[4]
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6 and host is None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not bind_only:
            # Workers share the port; the master's probe binds without SO_REUSEPORT so that a
            # port already served (by another CallFS too) is refused instead of shared.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not bind_only:
            sock.listen(1024)
            sock.setblocking(False)
        return sock
    except OSError as exc:
        raise StartupError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc


def _probe_address(addr: str, wait: float = datadir.LOCK_WAIT_SECONDS) -> None:
    """The address is free: bound once without SO_REUSEPORT, so a port another server holds
    is refused, not shared. Retried briefly: the workers of a server killed a moment ago may
    still be closing their sockets."""
    deadline = time.monotonic() + wait
    while True:
        try:
            listen_socket(addr, bind_only=True).close()
            return
        except StartupError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def _build_locks(cfg, lock_fd: int | None, observer):
    """Redis locks (cluster-wide) or the local manager; built in each process after forking,
    since connections must not be shared across a fork."""
    if cfg.dlm.type == "redis":
        locks = RedisLockManager(cfg.dlm.redis_addr, cfg.dlm.redis_password,
                                 ttl=cfg.dlm.lock_ttl)
    else:
        locks = LocalLockManager(lock_fd)
    locks.observer = observer
    return locks


async def _open_locks(locks, cfg) -> None:
    try:
        await locks.open()
    except errors.ServiceUnavailable as exc:
        raise StartupError(f"cannot reach the lock manager (Redis at {cfg.dlm.redis_addr}): "
                           f"{exc}") from exc


def _generations_path(cfg) -> str:
    """The write-generation table shared by every process of this host that serves the same
    metadata: beside the SQLite file, or in shared memory named after the PostgreSQL DSN."""
    if cfg.metadata_store.type == "sqlite":
        return cfg.metadata_store.sqlite_path + "-gen"
    digest = hashlib.sha256(cfg.metadata_store.dsn.encode()).hexdigest()[:20]
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(folder, f"callfs-gen-{digest}")


def _data_targets(loaded) -> list[datadir.Target]:
    """What this server must not share with a server it cannot coordinate with: the local
    root, and the metadata store as seen from this host (its generation table); with the
    embedded profile or --data, also the directory holding them and the secrets (mode 0700,
    as the secrets file wants it)."""
    cfg = loaded.config
    targets = []
    if loaded.data_dir:
        targets.append(datadir.Target(loaded.data_dir, f"data directory {loaded.data_dir}",
                                      directory=True, mode=0o700))
    if cfg.backend.localfs_root_path:
        root = os.path.abspath(cfg.backend.localfs_root_path)
        targets.append(datadir.Target(root, f"data directory {root}", directory=True))
    if cfg.metadata_store.type == "sqlite":
        shown = os.path.abspath(cfg.metadata_store.sqlite_path)
    else:
        shown = config.redact_dsn(cfg.metadata_store.dsn)
    targets.append(datadir.Target(_generations_path(cfg),
                                  f"metadata store {shown}", directory=False))
    return targets


def _lock_data(loaded) -> datadir.DataLock:
    cfg = loaded.config
    shared = datadir.may_share(cfg.metadata_store.type, cfg.dlm.type)
    try:
        return datadir.acquire(_data_targets(loaded), shared=shared)
    except (datadir.DataDirectoryBusy, datadir.DataDirectoryError) as exc:
        raise StartupError(str(exc)) from None


def _build_store(cfg, observer):
    """The metadata store, every database operation measured, behind the cache."""
    if cfg.metadata_store.type == "postgres":
        store = PostgresStore(cfg.metadata_store.dsn)
    else:
        store = SQLiteStore(cfg.metadata_store.sqlite_path, durable=cfg.backend.localfs_fsync)
    return CachedStore(MeasuredStore(store, observer), open_table(_generations_path(cfg)))


def _build_backends(cfg) -> dict:
    """Every backend the configuration enables: the local disk always (its root may be
    empty: disabled), S3 when a bucket is named. Uploads of S3 carry this run's id, so that
    recovery tells a dead writer's multipart uploads from a live one's."""
    backends = {"localfs": LocalFSBackend(cfg.backend.localfs_root_path,
                                          durable=cfg.backend.localfs_fsync)}
    if cfg.backend.s3_bucket_name:
        backends["s3"] = S3Backend(S3Settings.from_config(cfg.backend),
                                   instance_id=cfg.instance_discovery.instance_id,
                                   run_id=f"{_started_ns:x}")
    return backends


FORWARD_TIMEOUT = 30.0  # seconds a forward may wait on the owner for each piece (API.md §13.4)


def _build_peer_readers(cfg) -> dict:
    """How the files each peer owns are read: through its public API, with the internal
    secret (API.md §13.4)."""
    me = cfg.instance_discovery.instance_id
    return {instance: PeerBackend(instance, url, secret=cfg.auth.internal_proxy_secret,
                                  forwarded_by=me, read_timeout=FORWARD_TIMEOUT,
                                  verify_tls=not cfg.backend.internal_proxy_skip_tls_verify)
            for instance, url in (cfg.instance_discovery.peer_endpoints or {}).items()
            if instance != me}


def _build_engine(cfg, store, locks, observer=None) -> Engine:
    return Engine(
        store=store, locks=locks, backends=_build_backends(cfg),
        default_backend=cfg.backend.default_backend or "localfs",
        instance_id=cfg.instance_discovery.instance_id,
        file_op_timeout=cfg.server.file_op_timeout,
        metadata_op_timeout=cfg.server.metadata_op_timeout,
        file_mode=cfg.auth.default_file_mode,
        dir_mode=cfg.auth.default_dir_mode,
        peers=(cfg.instance_discovery.peer_endpoints or {}).keys(),
        peer_readers=_build_peer_readers(cfg),
        rules=Rules(cfg.auth.permission_model, accounts_of(cfg)),
        observer=observer,
    )


def accounts_of(cfg) -> Accounts:
    """The users and groups of the configuration (CONFIG.md §5.2)."""
    return Accounts(config.configured_users(cfg.auth), cfg.auth.groups)


async def _prepare(cfg, lock_fd: int, observer) -> int:
    backends = _build_backends(cfg)
    try:
        await backends["localfs"].open()
    except OSError as exc:
        raise StartupError(f"cannot create the local root {cfg.backend.localfs_root_path}: "
                           f"{exc.strerror or exc}") from exc
    if "s3" in backends:
        try:
            await backends["s3"].open()  # HEAD bucket: it must answer (CONFIG.md §5.5)
        except errors.CallFSError as exc:
            raise StartupError(f"cannot reach the S3 bucket {cfg.backend.s3_bucket_name}: "
                               f"{exc}") from None
        finally:
            await backends["s3"].close()
    store = _build_store(cfg, observer)
    try:
        await store.open()
    except Exception as exc:
        raise StartupError(f"cannot open the metadata store: {exc}") from exc
    locks = _build_locks(cfg, lock_fd, observer)
    try:
        await _open_locks(locks, cfg)
        # Fencing numbers only grow, even when the counter was lost (a Redis without
        # persistence, the local manager's fresh file) or the lock manager changed.
        try:
            await locks.raise_fence(await store.max_fence())
        except errors.ServiceUnavailable as exc:
            raise StartupError(f"cannot set the fencing counter: {exc}") from exc
        return await recover(_build_engine(cfg, store, locks, observer))
    finally:
        await locks.close()
        await store.close()


async def _recover_forever(engine: Engine, first: float, started_ns: int) -> None:
    """Leftovers of a worker that died mid-write, while the others serve: each entry is taken
    under its lock. The first pass comes once the locks of a process that died before this
    start have expired (the start-up pass skips entries they still hold)."""
    await asyncio.sleep(first + random.random())
    while True:
        try:
            handled = await recover(engine, min_age=RECOVERY_MIN_AGE, started_ns=started_ns)
            if handled:
                log.info("recovered interrupted writes", extra={"count": handled})
        except Exception:
            log.exception("recovery failed; retrying later")
        await asyncio.sleep(RECOVERY_INTERVAL * (0.75 + random.random() / 2))


async def _worker_main(cfg, lock_fd: int, sock: socket.socket, slot: int,
                       metrics_sock: socket.socket | None) -> None:
    loop = asyncio.get_running_loop()
    metrics = measures.Metrics(_tally)
    metrics.claim(slot)
    if _log is not None:
        _log.count_dropped(metrics.tally, metrics.dropped_cell())
    access = _log.sink if _log is not None and structured.access_enabled(cfg.log.level) else None
    # The store's writer thread needs the GIL briefly per commit; under load the event loop
    # would keep it for the default 5 ms each time, stalling every write behind it.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    store = _build_store(cfg, metrics)
    await store.open()
    locks = _build_locks(cfg, lock_fd, metrics)
    await _open_locks(locks, cfg)
    engine = _build_engine(cfg, store, locks, metrics)
    auth = Authenticator(cfg.auth.api_keys, cfg.auth.api_key_users, cfg.auth.internal_proxy_secret,
                         engine.rules.accounts)
    files = FilesAPI(engine, dict(cfg.instance_discovery.peer_endpoints or {}))
    system = SystemAPI(TransferAPI(engine), _tally)
    router = Router(auth=auth, files=files, directories=DirectoriesAPI(engine),
                    system=system, limits=_limits, metrics=metrics)
    router.links = LinksAPI(Links(engine, cfg.auth.single_use_link_secret),
                            cfg.server.external_url)
    hot = hot_path(auth=auth, engine=engine, security=SECURITY_HEADERS, hsts=HSTS,
                   tally=_tally, cells=metrics.hot_cells(), read_cells=metrics.read_cells(),
                   log=access)
    context = _tls_context
    state = ServerState(router, loop, tls=context is not None, hot=hot, metrics=metrics,
                        access=access, read_timeout=cfg.server.read_timeout,
                        write_timeout=cfg.server.write_timeout)
    server = await loop.create_server(lambda: HttpProtocol(state), sock=sock, ssl=context,
                                      backlog=1024)
    servers = [server]
    if metrics_sock is not None:
        # The unauthenticated metrics listener (API.md §15.2): plain HTTP, /metrics only.
        metrics_state = ServerState(MetricsRouter(system), loop, tls=False, metrics=metrics,
                                    access=access, read_timeout=cfg.server.read_timeout,
                                    write_timeout=cfg.server.write_timeout)
        servers.append(await loop.create_server(lambda: HttpProtocol(metrics_state),
                                                sock=metrics_sock, backlog=128))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sweeper = loop.create_task(state.sweep_forever())
    first = cfg.dlm.lock_ttl + 5 if cfg.dlm.type == "redis" else RECOVERY_INTERVAL
    recovery = loop.create_task(_recover_forever(engine, first, _started_ns))
    # Every worker sweeps links: a sweep is idempotent, and each one's timing is spread.
    link_sweeper = loop.create_task(sweep_links_forever(store))
    log.info("serving", extra={"pid": os.getpid(), "slot": slot,
                               "listen": cfg.server.listen_addr,
                               "metrics_listen": cfg.metrics.listen_addr or None,
                               "tls": context is not None, "tls_downloads": tls_downloads,
                               "access_log": access is not None})
    await stop.wait()
    log.info("stopping", extra={"pid": os.getpid(), "connections": len(state.connections)})
    for extra in servers[1:]:
        extra.close()
    await _drain(server, state)
    sweeper.cancel()
    recovery.cancel()
    link_sweeper.cancel()
    await locks.close()
    await store.close()


async def _drain(server, state: ServerState) -> None:
    server.close()
    state.draining = True
    deadline = state.loop.time() + DRAIN_SECONDS
    while state.connections and state.loop.time() < deadline:
        for conn in list(state.connections):
            conn.shutdown()
        await asyncio.sleep(0.05)
    for conn in list(state.connections):
        conn.abort()
    log.info("stopped", extra={"pid": os.getpid()})


def _run_worker(cfg, lock_fd: int, sock: socket.socket, slot: int,
                metrics_sock: socket.socket | None) -> int:
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_worker_main(cfg, lock_fd, sock, slot, metrics_sock))
        return 0
    except Exception:
        log.exception("worker failed")
        return 1


# -- the master ------------------------------------------------------------------------------

def serve(loaded, workers: int | None = None, announce=None) -> int:
    """Start in an order that changes nothing until this server is known to be alone on its
    address and its data: the address is probed, then the data directory locked, and only
    then are secrets, directories and the database created and recovery run.
    `announce(loaded, workers, data_lock)` is told once everything is ready."""
    cfg = loaded.config
    global _started_ns, _data_lock, _tls_context, tls_downloads, _limits, _tally, _log
    _log = structured.setup(cfg.log.level, cfg.log.format, cfg.instance_discovery.instance_id)
    for warning in loaded.warnings:
        log.warning("configuration", extra={"detail": warning})
    workers = workers or os.cpu_count() or 1
    _started_ns = time.time_ns()
    try:
        problem = config.unavailable(cfg)
        if problem:
            raise StartupError(problem)
        _tls_context = _ssl_context(cfg)
        if _tls_context is not None:
            tls_downloads = tls.download_path(FILE_CHUNK)
        _probe_address(cfg.server.listen_addr)
        if cfg.metrics.listen_addr:
            _probe_address(cfg.metrics.listen_addr)
        _data_lock = _lock_data(loaded)
        try:
            loaded = config.keep_secrets(loaded)
        except config.ConfigError as exc:
            raise StartupError(str(exc)) from None
        cfg = loaded.config
        lock_fd = LocalLockManager.shared_file()
        _limits = RateLimiter()
        # One row for the master (recovery at start, worker restarts), one per worker.
        _tally = measures.table(workers + 1)
        recovered = asyncio.run(_prepare(cfg, lock_fd, measures.Metrics(_tally)))
        if recovered:
            log.info("recovered writes a crash interrupted", extra={"count": recovered})
        sock = metrics_sock = None
        if workers == 1:
            sock = listen_socket(cfg.server.listen_addr)
            if cfg.metrics.listen_addr:
                metrics_sock = listen_socket(cfg.metrics.listen_addr)
    except StartupError as exc:
        _log.flush()
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if announce is not None:
        announce(loaded, workers, _data_lock)
    log.info("started", extra={"pid": os.getpid(), "workers": workers,
                               "instance": cfg.instance_discovery.instance_id,
                               "listen": cfg.server.listen_addr,
                               "metrics_listen": cfg.metrics.listen_addr or None})
    if workers == 1:
        code = _run_worker(cfg, lock_fd, sock, 1, metrics_sock)
    else:
        code = _supervise(cfg, lock_fd, workers)
    log.info("shut down", extra={"pid": os.getpid(), "exit_status": code})
    return code


def _die_with_parent(master: int) -> None:
    """A worker whose master was killed would keep the port and the data directory with
    nobody to stop or replace it: have the kernel end it, like the rest of its server."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != master:  # the master died before prctl took effect
        os._exit(1)


def _spawn(cfg, lock_fd: int, slot: int) -> int:
    master = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _die_with_parent(master)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            sock = listen_socket(cfg.server.listen_addr)
            metrics_sock = (listen_socket(cfg.metrics.listen_addr) if cfg.metrics.listen_addr
                            else None)
            code = _run_worker(cfg, lock_fd, sock, slot, metrics_sock)
        except BaseException:
            log.exception("worker failed to start")
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _supervise(cfg, lock_fd: int, workers: int) -> int:
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    master = measures.Metrics(_tally)
    master.claim(0)
    if _log is not None:
        _log.count_dropped(master.tally, master.dropped_cell())
    # pid -> the slot of the shared counts it writes (1..workers); a replacement takes its
    # predecessor's slot and counts on from there.
    children = {_spawn(cfg, lock_fd, slot): slot for slot in range(1, workers + 1)}
    restarts: list[float] = []
    exit_code = 0
    while children and not stopping:
        time.sleep(0.1)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                continue
            slot = children.pop(pid)
            if stopping:
                continue
            log.error("worker exited; starting another",
                      extra={"pid": pid, "slot": slot, "status": _exit_text(status)})
            master.worker_restarted()
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < _RESTART_WINDOW] + [now]
            if len(restarts) > _RESTART_LIMIT:
                log.error("workers keep failing; stopping")
                stopping = True
                exit_code = 1
                break
            replacement = _spawn(cfg, lock_fd, slot)
            children[replacement] = slot
            log.info("worker started", extra={"pid": replacement, "slot": slot})
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_SECONDS + 5
    while children and time.monotonic() < deadline:
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0]:
                children.pop(pid)
        time.sleep(0.05)
    for pid in children:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return exit_code


def _exit_text(status: int) -> str:
    """A wait status in words: `exit 3`, `killed by SIGKILL`."""
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
