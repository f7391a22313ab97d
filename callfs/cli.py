"""The `callfs` command line (CONFIG.md §7).

A small hand-written parser rather than argparse: errors must read `Error: <message>`
followed by usage and exit with status 1, flags of `config` also apply after `validate`,
and `callfs` alone runs the server.
"""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import callfs
from callfs import config

JOIN_TIMEOUT_SECONDS = 15


class UsageError(Exception):
    """A command line that does not parse; reported with the command's usage."""

    def __init__(self, message: str, command: "Command"):
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class Flag:
    long: str
    short: str = ""
    metavar: str = ""  # empty for a switch
    help: str = ""


@dataclass(eq=False)
class Command:
    name: str
    summary: str
    usage: str
    flags: tuple[Flag, ...] = ()
    run: Callable[["Command", dict, list[str]], int] | None = None
    inherit_flags: bool = False  # this command's flags also apply to its subcommands
    children: dict[str, "Command"] = field(default_factory=dict)
    parent: "Command | None" = None

    def add(self, *children: "Command") -> "Command":
        for child in children:
            child.parent = self
            self.children[child.name] = child
        return self

    @property
    def path(self) -> str:
        return f"{self.parent.path} {self.name}" if self.parent else self.name

    def all_flags(self) -> list[Flag]:
        flags = list(self.flags)
        ancestor = self.parent
        while ancestor is not None:
            if ancestor.inherit_flags:
                flags.extend(ancestor.flags)
            ancestor = ancestor.parent
        return flags + [HELP_FLAG]


HELP_FLAG = Flag("help", "h", help="show help for this command")
CONFIG_FLAG = Flag(
    "config",
    "c",
    "PATH",
    "configuration file (default: config.yaml, config.yml or config.json "
    "in the current directory)",
)
STRICT_FLAG = Flag(
    "strict",
    help="refuse unknown configuration keys and CALLFS_* variables shaped like keys "
    "(default: ignore each with a warning naming the key meant)",
)


# --- parsing ----------------------------------------------------------------------------


def parse(argv: list[str], root: "Command") -> tuple[Command, dict, list[str]]:
    """(command, flag values by long name, positional arguments)."""
    command, opts, args = root, {}, []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            args.extend(argv[i:])
            break
        if token.startswith("-") and token != "-":
            i = _parse_flag(command, token, argv, i, opts)
        elif command.children:
            if token not in command.children:
                raise UsageError(f'unknown command "{token}" for "{command.path}"', command)
            command = command.children[token]
        else:
            args.append(token)
    return command, opts, args


def _find_flag(command: Command, token: str) -> tuple[Flag, str | None]:
    """The flag a token names and its attached value (`--x=v`, `-cPATH`), if any."""
    flags = command.all_flags()
    if token.startswith("--"):
        name, eq, value = token[2:].partition("=")
        match = next((f for f in flags if f.long == name), None)
        if match is None:
            raise UsageError(f"unknown flag: --{name}", command)
        return match, value if eq else None
    name, rest = token[1], token[2:]
    match = next((f for f in flags if f.short == name), None)
    if match is None:
        raise UsageError(f"unknown shorthand flag: '{name}' in {token}", command)
    if not rest:
        return match, None
    return match, rest[1:] if rest.startswith("=") else rest


def _parse_flag(command: Command, token: str, argv: list[str], i: int, opts: dict) -> int:
    flag, value = _find_flag(command, token)
    if not flag.metavar:
        if value is not None:
            raise UsageError(f"flag --{flag.long} does not take a value", command)
        opts[flag.long] = True
        return i
    if value is None:
        if i >= len(argv):
            raise UsageError(f"flag needs an argument: {token}", command)
        value, i = argv[i], i + 1
    opts[flag.long] = value
    return i


# --- output -----------------------------------------------------------------------------


def _flag_lines(flags: list[Flag]) -> list[str]:
    rows = []
    for f in flags:
        names = (f"-{f.short}, " if f.short else "    ") + f"--{f.long}"
        rows.append((names + (f" {f.metavar}" if f.metavar else ""), f.help))
    width = max(len(left) for left, _ in rows) + 3
    return [f"  {left.ljust(width)}{text}" for left, text in rows]


def help_text(command: Command) -> str:
    lines = [command.summary, "", "Usage:", f"  {command.usage}"]
    if command.children:
        lines += ["", "Commands:"]
        width = max(len(name) for name in command.children) + 3
        lines += [f"  {n.ljust(width)}{c.summary}" for n, c in command.children.items()]
    lines += ["", "Flags:", *_flag_lines(command.all_flags())]
    if command.children:
        lines += ["", f"Run '{command.path} <command> --help' for more about a command."]
    return "\n".join(lines)


def _warn(messages: list[str]) -> None:
    """Warnings to standard error, after what standard output already shows."""
    if not messages:
        return
    sys.stdout.flush()
    for message in messages:
        print(f"Warning: {message}", file=sys.stderr)
    sys.stderr.flush()


def _error(command: Command, message: str) -> int:
    """Report a failure the way every command does (§7.1); the exit status is 1."""
    sys.stdout.flush()
    print(f"Error: {message}", file=sys.stderr)
    print(f"Usage: {command.usage}", file=sys.stderr)
    print(f"Run '{command.path} --help' for more information.", file=sys.stderr)
    return 1


# --- commands ---------------------------------------------------------------------------


def _workers(command: Command, opts: dict) -> int | None:
    text = opts.get("workers")
    if text is None:
        return None
    try:
        workers = int(text, 10)
    except ValueError:
        workers = 0
    if workers < 1:
        raise UsageError(f'invalid argument "{text}" for "--workers": must be at least 1', command)
    return workers


def _no_args(command: Command, args: list[str]) -> None:
    if args:
        raise UsageError(f'unexpected argument "{args[0]}" for "{command.path}"', command)


def _overrides(command: Command, opts: dict) -> config.Overrides:
    for flag in ("listen", "data"):
        if opts.get(flag) == "":
            raise UsageError(f'invalid argument "" for "--{flag}": must not be empty', command)
    return config.Overrides(listen=opts.get("listen"), data=opts.get("data"))


def run_server(command: Command, opts: dict, args: list[str]) -> int:
    _no_args(command, args)
    workers = _workers(command, opts)
    overrides = _overrides(command, opts)
    try:
        # Nothing is written here: the server stores the embedded profile's secrets only
        # once it holds the data directory.
        loaded = config.load(opts.get("config"), overrides=overrides,
                             strict=bool(opts.get("strict")))
    except config.ConfigError as exc:
        _warn(exc.unknown)
        return _error(command, str(exc))
    _warn(loaded.unknown)
    from callfs.server import serve  # imported late: config and CLI work without it

    return serve(loaded, workers=workers, announce=_announce)


def _announce(loaded: config.Loaded, workers: int, data_lock) -> None:
    from callfs.server import tls_downloads

    print("\n".join(start_summary(loaded, workers, data_lock.shared,
                                   tls_downloads=tls_downloads)), flush=True)


def start_summary(loaded: config.Loaded, workers: int, shared: bool,
                  tls_downloads: str | None = None) -> list[str]:
    """What the server is about to do, in one look; for the embedded profile, also the key
    and a command to try. `tls_downloads`: how downloads travel over TLS, when it is on."""
    cfg = loaded.config
    tls = config.uses_tls(cfg.server)
    scheme = "https" if tls else "http"
    host, port = config.split_host_port(cfg.server.listen_addr)
    shown = f"[{host}]" if host and ":" in host else host
    address = f"{scheme}://{shown}:{port}" if host else f"{scheme}://*:{port} (every interface)"
    if cfg.metadata_store.type == "sqlite":
        store = f"sqlite {cfg.metadata_store.sqlite_path}"
    else:
        store = f"{cfg.metadata_store.type} {config.redact_dsn(cfg.metadata_store.dsn)}"
    if cfg.dlm.type == "redis":
        locks = f"redis {cfg.dlm.redis_addr}"
    else:
        locks = "local (this instance's processes only)"
    data = loaded.data_dir or cfg.backend.localfs_root_path or "(no local backend)"
    sharing = "shared with this instance's other processes" if shared else "this server only"
    lines = []
    if loaded.source == "embedded":
        lines.append("CallFS is starting with the embedded single-node profile "
                     "(no config file, no CALLFS_* variables).")
    else:
        lines.append(f"CallFS is starting with {_source_text(loaded)}.")
    lines += [
        f"  Address:        {address}",
        f"  TLS:            {'on (' + cfg.server.cert_file + ')' if tls else 'off'}",
        *([f"  TLS downloads:  {tls_downloads}"] if tls and tls_downloads else []),
        f"  Metadata store: {store}",
        f"  Lock manager:   {locks}",
        f"  Data directory: {data} ({sharing})",
        f"  Workers:        {workers}",
    ]
    if loaded.source == "embedded":
        lines += _embedded_banner(loaded)
    return lines


def _source_text(loaded: config.Loaded) -> str:
    if loaded.source == "file":
        return f"configuration file {loaded.path}"
    return "CALLFS_* environment variables"


def _embedded_banner(loaded: config.Loaded) -> list[str]:
    """What a first-time user needs: the key and a command to try."""
    cfg = loaded.config
    key = cfg.auth.api_key_users["admin"]
    url = f"{config.base_url(cfg.server)}/v1/directories/"
    state = "created" if loaded.secrets_created else "existing"
    return [
        f"  Secrets file:   {loaded.secrets_path} ({state})",
        f"  Admin API key:  {key}",
        "Try it:",
        f'  curl -H "Authorization: Bearer {key}" {url}',
    ]


def run_validate(command: Command, opts: dict, args: list[str]) -> int:
    _no_args(command, args)
    overrides = _overrides(command, opts)
    print("Validating configuration...", flush=True)
    try:
        loaded = config.load(opts.get("config"), overrides=overrides,
                             strict=bool(opts.get("strict")))
    except config.ConfigError as exc:
        _warn(exc.unknown)
        print(f"Configuration validation failed: {exc}", flush=True)
        return _error(command, str(exc))
    warnings = loaded.unknown + loaded.warnings
    problem = config.unavailable(loaded.config)
    if problem:
        warnings.append(f"{problem}; 'callfs server' will refuse to start")
    _warn(warnings)
    print("\n".join(summary_lines(loaded)))
    return 0


def summary_lines(loaded: config.Loaded) -> list[str]:
    """The `config validate` summary (§7.2), plus the profile when it is the embedded one."""
    cfg = loaded.config
    lines = [
        "Configuration is valid",
        f"Instance ID: {cfg.instance_discovery.instance_id}",
        f"Listen Address: {cfg.server.listen_addr}",
        f"Metadata Store DSN: {config.mask_dsn(cfg.metadata_store.dsn)}",
        f"Redis Address: {cfg.dlm.redis_addr}",
        f"Local FS Root: {cfg.backend.localfs_root_path}",
    ]
    if cfg.backend.s3_bucket_name:
        lines.append(f"S3 Bucket: {cfg.backend.s3_bucket_name}")
        lines.append(f"S3 Region: {cfg.backend.s3_region}")
    if loaded.source == "embedded":
        lines += _embedded_lines(loaded)
    return lines


def _embedded_lines(loaded: config.Loaded) -> list[str]:
    cfg = loaded.config
    secrets_path = os.path.join(loaded.data_dir, config.SECRETS_FILE_NAME)
    state = "exists" if loaded.secrets_path else "created by the first 'callfs server'"
    return [
        "Profile: embedded (no config file and no CALLFS_* variables found)",
        f"Metadata Store: {cfg.metadata_store.type} {cfg.metadata_store.sqlite_path}",
        f"Lock Manager: {cfg.dlm.type}",
        f"API Users: {', '.join(sorted(cfg.auth.api_key_users))}",
        f"Secrets File: {secrets_path} ({state})",
    ]


_JOIN_FALLBACKS = (
    ("node-id", "raft.node_id", lambda c: c.raft.node_id),
    ("raft-addr", "raft.bind_addr", lambda c: c.raft.bind_addr),
    ("api-endpoint", "server.external_url", lambda c: c.server.external_url),
    ("internal-secret", "auth.internal_proxy_secret", lambda c: c.auth.internal_proxy_secret),
)


def _join_loaded(path: str | None) -> config.Loaded | None:
    """The configuration to fill in missing flags, or None when it does not load (§7.3)."""
    try:
        loaded = config.load(path)
    except config.ConfigError:
        return None
    # Secrets generated only in memory would never match the cluster's.
    if loaded.source == "embedded" and loaded.secrets_path is None:
        return None
    return loaded


def run_join(command: Command, opts: dict, args: list[str]) -> int:
    _no_args(command, args)
    if not opts.get("leader"):
        raise UsageError('required flag "--leader" not set', command)
    loaded = _join_loaded(opts.get("config"))
    values = {}
    for flag, key, read in _JOIN_FALLBACKS:
        values[flag] = opts.get(flag) or (read(loaded.config) if loaded else "")
        if not values[flag]:
            return _error(command, f"--{flag} is required (or set {key} in the configuration)")
    skip_verify = bool(loaded and loaded.config.backend.internal_proxy_skip_tls_verify)
    return _post_join(command, opts["leader"], values, skip_verify)


def _post_join(command: Command, leader: str, values: dict, skip_verify: bool) -> int:
    body = {
        "node_id": values["node-id"],
        "raft_addr": values["raft-addr"],
        "api_endpoint": values["api-endpoint"],
    }
    request = urllib.request.Request(
        f"{leader.rstrip('/')}/v1/internal/raft/join",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {values['internal-secret']}",
        },
    )
    context = None
    if skip_verify:  # backend.internal_proxy_skip_tls_verify: the cluster's own choice
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            request, timeout=JOIN_TIMEOUT_SECONDS, context=context
        ) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return _error(command, f"join failed: {reason}")
    return _join_result(command, values["node-id"], status, payload)


def _join_result(command: Command, node_id: str, status: int, payload: bytes) -> int:
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if status == 200:
        leader_id, state = answer.get("leader_id", ""), answer.get("status", "")
        print(f"Join successful: node={node_id} leader={leader_id} status={state}")
        return 0
    if answer.get("error"):
        return _error(command, f"join failed: {answer['error']}")
    return _error(command, f"join failed with status {status}")


def run_help(command: Command, opts: dict, args: list[str]) -> int:
    topic = ROOT
    for word in args:
        if word not in topic.children:
            raise UsageError(f'unknown help topic "{" ".join(args)}"', command)
        topic = topic.children[word]
    print(help_text(topic))
    return 0


# --- the command tree -------------------------------------------------------------------

LISTEN_FLAG = Flag(
    "listen", "", "HOST:PORT",
    "listen here (sets server.listen_addr, over the file and the environment)",
)
DATA_FLAG = Flag(
    "data", "", "DIR",
    "keep everything in DIR: files in DIR/files, SQLite in DIR/metadata.sqlite3 "
    "(over the file and the environment)",
)
SERVER = Command(
    "server",
    "Run the API server (the default command).",
    "callfs server [-c PATH] [--strict] [--workers N] [--listen HOST:PORT] [--data DIR]",
    flags=(
        CONFIG_FLAG,
        STRICT_FLAG,
        Flag("workers", "", "N", "worker processes sharing the port (default: number of CPUs)"),
        LISTEN_FLAG,
        DATA_FLAG,
    ),
    run=run_server,
)
VALIDATE = Command(
    "validate",
    "Load and validate the configuration, then print a summary.",
    "callfs config validate [-c PATH] [--strict] [--listen HOST:PORT] [--data DIR]",
    flags=(LISTEN_FLAG, DATA_FLAG),
    run=run_validate,
)
JOIN = Command(
    "join",
    "Ask the Raft leader to add this node to the cluster.",
    "callfs cluster join --leader URL [flags]",
    flags=(
        Flag("leader", "", "URL", "base URL of the current Raft leader (required)"),
        Flag("node-id", "", "ID", "this node's Raft ID (default: raft.node_id)"),
        Flag("raft-addr", "", "ADDR", "this node's Raft address (default: raft.bind_addr)"),
        Flag("api-endpoint", "", "URL", "this node's API URL (default: server.external_url)"),
        Flag(
            "internal-secret",
            "",
            "SECRET",
            "the cluster's internal secret (default: auth.internal_proxy_secret)",
        ),
        CONFIG_FLAG,
    ),
    run=run_join,
)
ROOT = Command(
    "callfs",
    "CallFS: a REST API filesystem. Without a command, runs the server.",
    "callfs [command] [flags]",
    flags=(Flag("version", help="print the version and exit"),),
    run=run_server,
).add(
    SERVER,
    Command(
        "config",
        "Check the configuration.",
        "callfs config [-c PATH] [--strict] validate",
        flags=(CONFIG_FLAG, STRICT_FLAG),
        inherit_flags=True,
    ).add(VALIDATE),
    Command("cluster", "Manage cluster membership.", "callfs cluster join [flags]").add(JOIN),
    Command(
        "help",
        "Show help for a command.",
        "callfs help [command]",
        run=run_help,
    ),
)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, opts, args = parse(argv, ROOT)
        if opts.get("help"):
            print(help_text(command))
            return 0
        if opts.get("version"):
            print(f"callfs {callfs.__version__}")
            return 0
        if command.run is None:
            print(help_text(command))
            return 0
        return command.run(command, opts, args)
    except UsageError as exc:
        return _error(exc.command, str(exc))
