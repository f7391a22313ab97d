"""Configuration: schema and defaults, sources and precedence, validation (CONFIG.md).

Layers, later wins key by key: defaults < one file (YAML or JSON) < `CALLFS_*` variables <
the command line's `--listen` and `--data`. With neither a file nor a variable, the embedded
single-node profile applies (§2.4). A key CallFS does not know — in the file at any level,
in another case, or a `CALLFS_*` variable shaped like a key — is ignored with a warning that
names it and the key probably meant (CONFIG.md §2.3, §3); with `strict` it is an error.
"""

import json
import os
import re
import secrets
import typing
import urllib.parse
from typing import Any

import msgspec
from msgspec import Struct, field

from callfs import configparse as cp
from callfs.configparse import Duration, Mode, Size, UInt

# --- schema (CONFIG.md §5) --------------------------------------------------------------

DEFAULT_DSN = "postgres://callfs:callfs@localhost/callfs?sslmode=require"
DEFAULT_INTERNAL_SECRET = "change-me-internal-secret"
DEFAULT_LINK_SECRET = "change-me-link-secret"
PLACEHOLDER_API_KEY = "default-api-key"
MIN_KEY_BYTES = 16
MIN_PART_SIZE, MAX_PART_SIZE = 5 * 1024**2, 5 * 1024**3


class ServerConfig(Struct):
    listen_addr: str = ":8443"
    protocol: str = "https"
    external_url: str = "localhost:8443"
    cert_file: str = "server.crt"
    key_file: str = "server.key"
    enable_quic: bool = False
    quic_listen_addr: str = ":8443"
    read_timeout: Duration = 30.0
    write_timeout: Duration = 30.0
    file_op_timeout: Duration = 10.0
    metadata_op_timeout: Duration = 5.0


class AuthConfig(Struct):
    api_keys: list[str] = field(default_factory=list)
    api_key_users: dict[str, str] = field(default_factory=dict)
    internal_proxy_secret: str = DEFAULT_INTERNAL_SECRET
    single_use_link_secret: str = DEFAULT_LINK_SECRET
    permission_model: str = "unix"
    groups: dict[str, list[str]] = field(default_factory=dict)
    default_file_mode: Mode = 0o644
    default_dir_mode: Mode = 0o755


class LogConfig(Struct):
    level: str = "info"
    format: str = "json"


class MetricsConfig(Struct):
    listen_addr: str = ":9090"


class BackendConfig(Struct):
    default_backend: str = "localfs"
    localfs_root_path: str = "/var/lib/callfs"
    localfs_fsync: bool = True
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_bucket_name: str = ""
    s3_endpoint: str = ""
    s3_server_side_encryption: str = "AES256"
    s3_acl: str = "private"
    s3_kms_key_id: str = ""
    s3_prefix: str = ""
    s3_part_size: Size = 16 * 1024**2
    internal_proxy_skip_tls_verify: bool = False


class MetadataStoreConfig(Struct):
    type: str = "postgres"
    dsn: str = DEFAULT_DSN
    sqlite_path: str = "./callfs.sqlite3"
    redis_addr: str = "localhost:6379"
    redis_password: str = ""
    redis_db: int = 0
    redis_key_prefix: str = "callfs:"


class RaftConfig(Struct):
    enabled: bool = False
    node_id: str = "callfs-node-1"
    bind_addr: str = "127.0.0.1:7000"
    data_dir: str = "./raft"
    bootstrap: bool = False
    peers: dict[str, str] = field(default_factory=dict)
    api_peer_endpoints: dict[str, str] = field(default_factory=dict)
    apply_timeout: Duration = 10.0
    forward_timeout: Duration = 10.0
    snapshot_interval: Duration = 60.0
    snapshot_threshold: UInt = 256
    retain_snapshot_count: int = 2


class DLMConfig(Struct):
    type: str = "redis"
    redis_addr: str = "localhost:6379"
    redis_password: str = ""
    lock_ttl: Duration = 30.0  # CallFS: a Redis lock's lifetime without renewal


class HAConfig(Struct):
    replication_enabled: bool = False
    replica_backend: str = ""
    require_replica_success: bool = False


class ErasureConfig(Struct):
    enabled: bool = False
    data_shards: int = 0
    parity_shards: int = 0
    min_file_size: int = 0
    shard_backend: str = ""
    shard_path: str = ""


class InstanceDiscoveryConfig(Struct):
    instance_id: str = "callfs-instance-1"
    peer_endpoints: dict[str, str] = field(default_factory=dict)


class Config(Struct):
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    metadata_store: MetadataStoreConfig = field(default_factory=MetadataStoreConfig)
    raft: RaftConfig = field(default_factory=RaftConfig)
    dlm: DLMConfig = field(default_factory=DLMConfig)
    ha: HAConfig = field(default_factory=HAConfig)
    erasure: ErasureConfig = field(default_factory=ErasureConfig)
    instance_discovery: InstanceDiscoveryConfig = field(
        default_factory=InstanceDiscoveryConfig
    )


class Loaded(Struct):
    """A validated configuration and where it came from."""

    config: Config
    source: str  # "file" | "env" | "embedded"
    path: str | None = None
    secrets_created: bool = False
    secrets_path: str | None = None  # the embedded profile's secrets, once stored on disk
    warnings: list[str] = field(default_factory=list)
    data_dir: str | None = None  # the embedded profile's directory, or --data's
    # Unknown keys and variables, ignored (CONFIG.md §2.3, §3): one warning each, naming the
    # key probably meant. Kept apart from `warnings` so the command line prints them plainly.
    unknown: list[str] = field(default_factory=list)


class Overrides(Struct):
    """What the command line sets; it wins over every other source."""

    listen: str | None = None  # --listen HOST:PORT → server.listen_addr
    data: str | None = None  # --data DIR → DIR/files, DIR/metadata.sqlite3, DIR/secrets.yaml


class ConfigError(Exception):
    """A configuration that cannot be loaded or is invalid; str() is the user-facing text.

    `unknown` holds the warnings about unknown keys found before the failure (a typo is often
    the cause of the error that follows it), for the command line to show with the error."""

    def __init__(self, message: str, unknown: list[str] | None = None):
        super().__init__(message)
        self.unknown = list(unknown or [])


_CONVERTERS = {
    str: cp.to_str,
    bool: cp.to_bool,
    int: cp.to_int,
    UInt: cp.to_uint,
    Duration: cp.to_duration,
    Size: cp.to_size,
    Mode: cp.to_mode,
    list[str]: cp.to_str_list,
    dict[str, str]: cp.to_str_map,
    dict[str, list[str]]: cp.to_list_map,
}
_SECTIONS: dict[str, type] = typing.get_type_hints(Config)
_SCHEMA: dict[str, dict[str, Any]] = {
    name: typing.get_type_hints(cls) for name, cls in _SECTIONS.items()
}
_MAP_TYPES = (dict[str, str], dict[str, list[str]])


# --- assembling the layers (§1–§3) ------------------------------------------------------

RawValues = dict[tuple[str, str], Any]


def _unmarshal_error(detail: str) -> ConfigError:
    return ConfigError(f"failed to unmarshal config: {detail}")


class Unknown(Struct, frozen=True):
    """A name in the file or the environment that configures nothing."""

    kind: str  # "section" | "key" | "variable"
    name: str  # dotted as written (`server.LISTEN_ADDR`), or the variable's name
    guess: str | None = None  # the known key (or variable) nearest to it


def _file_values(tree: dict, unknown: list[Unknown]) -> RawValues:
    """Known keys of a file tree; null means "not set" and leaves the default."""
    raw: RawValues = {}
    for section, keys in tree.items():
        section = str(section)
        if section not in _SCHEMA:
            # A map (or nothing) at the top is a section; a value there is a key without one.
            kind = "section" if keys is None or isinstance(keys, dict) else "key"
            unknown.append(Unknown(kind, section, suggest(section, None)))
            continue
        if keys is None:
            continue
        if not isinstance(keys, dict):
            raise _unmarshal_error(f"{section}: expected a map, got {cp.describe(keys)}")
        for key, value in keys.items():
            key = str(key)
            if key not in _SCHEMA[section]:
                unknown.append(Unknown("key", f"{section}.{key}", suggest(section, key)))
            elif value is not None:
                raw[(section, key)] = value
    return raw


def _apply_env(raw: RawValues, entries, unknown: list[Unknown], ignored: list[str]) -> None:
    """Overlay CALLFS_* values: a scalar per key, map entries one per variable (§3).

    A variable that names no key is reported as unknown when it looks meant as one: it has
    the `__` separator, or is a near miss of a key's variable (`CALLFS_SERVER_LISTEN_ADDR`)."""
    for name, path, value in entries:
        schema = _SCHEMA.get(path[0], {})
        if len(path) == 1 and path[0] in _SCHEMA:
            raise _unmarshal_error(f"{path[0]}: expected a map, got a string ({name})")
        if len(path) == 2 and path[1] in schema:
            raw[(path[0], path[1])] = value
        elif len(path) == 3 and schema.get(path[1]) in _MAP_TYPES:
            current = raw.get((path[0], path[1]))
            if current is None or isinstance(current, dict):
                raw[(path[0], path[1])] = {**(current or {}), path[2]: value}
            # otherwise the non-map value fails conversion on its own
        elif len(path) == 1 and not _env_near_miss(path[0]):
            # Not shaped like a key (`CALLFS_VENV`, a script's own): not configuration.
            ignored.append(name)
        else:
            guess = _env_near_miss(path[0]) if len(path) == 1 else suggest(path[0], path[1])
            unknown.append(Unknown("variable", name, guess and _variable(guess)))


# --- unknown keys and the nearest known one -------------------------------------------------


def suggest(section: str, key: str | None) -> str | None:
    """The known key (dotted) or section nearest to an unknown one, or None."""
    return cp.nearest_key(_SCHEMA, section, key)


def _env_near_miss(name: str) -> str | None:
    """The key a one-level variable name was probably meant for (`server_listen_addr`)."""
    return cp.nearest_variable_key(_SCHEMA, name)


def _variable(dotted: str) -> str:
    """`server.listen_addr or metrics.listen_addr` → the variables' names."""
    names = [cp.ENV_PREFIX + key.replace(".", "__").upper() for key in dotted.split(" or ")]
    return " or ".join(names)


def _named(item: Unknown) -> str:
    return f"{item.name} (did you mean {item.guess}?)" if item.guess else item.name


_KIND_WORDS = {"section": "section", "key": "key", "variable": "environment variable"}


def unknown_warning(item: Unknown) -> str:
    """`unknown key server.listen_adr ignored (did you mean server.listen_addr?)`"""
    text = f"unknown {_KIND_WORDS[item.kind]} {item.name} ignored"
    return f"{text} (did you mean {item.guess}?)" if item.guess else text


def _refuse_unknown(unknown: list[Unknown], file_path: str | None) -> None:
    """Strict mode: every unknown name at once, each with the key meant, as one error."""
    if not unknown:
        return
    where = f" in {file_path}" if file_path is not None else ""
    files = [_named(item) for item in unknown if item.kind != "variable"]
    variables = [_named(item) for item in unknown if item.kind == "variable"]
    parts = []
    if files:
        label = "unknown key" if len(files) == 1 else "unknown keys"
        parts.append(f"{label}{where}: {', '.join(files)}")
    if variables:
        label = "unknown environment variable" if len(variables) == 1 else (
            "unknown environment variables")
        parts.append(f"{label}: {', '.join(variables)}")
    _fail("; ".join(parts))


def _build(raw: RawValues) -> Config:
    """Convert merged raw values into the typed Structs, defaults elsewhere."""
    sections = {}
    for section, cls in _SECTIONS.items():
        values = {}
        for key, kind in _SCHEMA[section].items():
            if (section, key) not in raw:
                continue
            try:
                values[key] = _CONVERTERS[kind](raw[(section, key)])
            except cp.ConversionError as exc:
                raise _unmarshal_error(f"{section}.{key}: {exc}") from None
        sections[section] = cls(**values)
    return Config(**sections)


def _find_file(path: str | None, cwd: str) -> str | None:
    """The file to read: the one named, else config.yaml/.yml/.json in cwd (§2.1)."""
    if path is not None:
        try:
            os.stat(os.path.join(cwd, path))
        except (FileNotFoundError, NotADirectoryError) as exc:
            reason = (exc.strerror or "no such file").lower()
            raise ConfigError(f"specified config file {path} not found: {reason}") from None
        return path
    for name in ("config.yaml", "config.yml", "config.json"):
        if os.path.isfile(os.path.join(cwd, name)):
            return os.path.join(cwd, name)
    return None


def _read_file(path: str, cwd: str) -> dict:
    try:
        return cp.read_tree(os.path.join(cwd, path))
    except cp.FileFormatError as exc:
        raise ConfigError(f"failed to load config file {path}: {exc}") from None


def load(
    path: str | None = None,
    *,
    environ=None,
    cwd: str | None = None,
    create_secrets: bool = False,
    overrides: Overrides | None = None,
    strict: bool = False,
) -> Loaded:
    """Assemble, convert and validate the configuration; raise ConfigError on any failure.

    The one path both `callfs config validate` and `callfs server` take: they see the same
    errors and the same warnings. Unknown keys and variables shaped like keys are ignored,
    each reported in `Loaded.unknown` (CONFIG.md §2.3, §3); with strict they are an error,
    raised before any other check. With create_secrets false, nothing is ever written."""
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    overrides = overrides or Overrides()
    data_dir = os.path.join(cwd, overrides.data) if overrides.data else None
    entries = cp.env_entries(environ)
    file_path = _find_file(path, cwd)
    if file_path is None and not entries:
        loaded = _load_embedded(data_dir or os.path.join(cwd, DATA_DIR_NAME), overrides)
        return keep_secrets(loaded) if create_secrets else loaded
    unknown: list[Unknown] = []
    ignored: list[str] = []
    tree = _read_file(file_path, cwd) if file_path is not None else {}
    try:
        raw = _file_values(tree, unknown)
        _apply_env(raw, entries, unknown, ignored)
        if strict:
            _refuse_unknown(unknown, file_path)
        _apply_overrides(raw, overrides, data_dir)
        config = _build(raw)
        warnings = validate(config)
    except ConfigError as exc:
        if not strict:  # the names ignored so far, shown with the error they may explain
            exc.unknown = [unknown_warning(item) for item in unknown]
        raise
    warnings += [f"{name} names no configuration key; ignored" for name in ignored]
    return Loaded(
        config=config,
        source="file" if file_path is not None else "env",
        path=os.path.join(cwd, file_path) if file_path is not None else None,
        warnings=warnings,
        data_dir=data_dir,
        unknown=[unknown_warning(item) for item in unknown],
    )


def _apply_overrides(raw: RawValues, overrides: Overrides, data_dir: str | None) -> None:
    """The command line's values, over every other source."""
    if overrides.listen is not None:
        raw[("server", "listen_addr")] = overrides.listen
    if data_dir is not None:
        raw[("backend", "localfs_root_path")] = os.path.join(data_dir, "files")
        raw[("metadata_store", "sqlite_path")] = os.path.join(data_dir, "metadata.sqlite3")


# --- the embedded profile (§2.4) --------------------------------------------------------

DATA_DIR_NAME = "callfs-data"
SECRETS_FILE_NAME = "secrets.yaml"
_SECRET_NAMES = ("admin_api_key", "internal_proxy_secret", "single_use_link_secret")
EMBEDDED_LISTEN = "127.0.0.1:8443"


def _embedded_values(data: str, listen: str) -> RawValues:
    return {
        ("server", "listen_addr"): listen,
        ("server", "protocol"): "http",
        ("server", "external_url"): _embedded_url(listen),
        ("backend", "localfs_root_path"): os.path.join(data, "files"),
        ("metadata_store", "type"): "sqlite",
        ("metadata_store", "sqlite_path"): os.path.join(data, "metadata.sqlite3"),
        ("dlm", "type"): "local",
        ("metrics", "listen_addr"): "",
    }


def _embedded_url(listen: str) -> str:
    """How this machine reaches the embedded server: a wildcard host becomes the loopback."""
    try:
        host, port = split_host_port(listen)
    except ValueError:
        return f"http://{listen}"  # validation reports the address
    if host in (None, "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _load_embedded(data: str, overrides: Overrides) -> Loaded:
    path = os.path.join(data, SECRETS_FILE_NAME)
    try:
        values, stored = cp.read_secrets(path, _SECRET_NAMES), True
    except FileNotFoundError:
        # Kept in memory until the server, holding the data directory, stores them.
        values = {name: secrets.token_urlsafe(32) for name in _SECRET_NAMES}
        stored = False
    except cp.SecretsFileError as exc:
        raise ConfigError(str(exc)) from None
    raw = _embedded_values(data, overrides.listen or EMBEDDED_LISTEN)
    _set_secrets(raw, values)
    config = _build(raw)
    warnings = validate(config)
    return Loaded(
        config=config,
        source="embedded",
        secrets_path=path if stored else None,
        warnings=warnings,
        data_dir=data,
    )


def _set_secrets(raw: RawValues, values: dict[str, str]) -> None:
    raw[("auth", "api_key_users")] = {"admin": values["admin_api_key"]}
    raw[("auth", "internal_proxy_secret")] = values["internal_proxy_secret"]
    raw[("auth", "single_use_link_secret")] = values["single_use_link_secret"]


def keep_secrets(loaded: Loaded) -> Loaded:
    """The embedded profile with its secrets on disk: stored now on a first start (mode 0600),
    or those another process stored a moment ago. Other profiles are returned as they are."""
    if loaded.source != "embedded" or loaded.secrets_path is not None:
        return loaded
    auth = loaded.config.auth
    fresh = {
        "admin_api_key": auth.api_key_users["admin"],
        "internal_proxy_secret": auth.internal_proxy_secret,
        "single_use_link_secret": auth.single_use_link_secret,
    }
    path = os.path.join(loaded.data_dir, SECRETS_FILE_NAME)
    try:
        created = cp.write_secrets(path, fresh)
        values = fresh if created else cp.read_secrets(path, _SECRET_NAMES)
    except (cp.SecretsFileError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None
    auth.api_key_users = {"admin": values["admin_api_key"]}
    auth.internal_proxy_secret = values["internal_proxy_secret"]
    auth.single_use_link_secret = values["single_use_link_secret"]
    return msgspec.structs.replace(loaded, secrets_created=created, secrets_path=path)


def _quote(text: str) -> str:
    """Double-quoted text, the way messages of §6 show user IDs and values."""
    return json.dumps(text, ensure_ascii=False)


# --- validation (§6) --------------------------------------------------------------------


def _fail(message: str) -> typing.NoReturn:
    raise ConfigError(f"config validation failed: {message}")


def validate(config: Config) -> list[str]:
    """Run §6's checks in order (first failure wins), fill in values; return warnings."""
    _check_server(config.server)
    _check_metadata_store(config)
    _check_dlm(config.dlm)
    _check_ha(config.ha)
    if not config.instance_discovery.instance_id:
        _fail("instance_discovery.instance_id is required")
    _check_api_keys(config.auth)
    _check_secrets(config.auth)
    _check_erasure(config.erasure)
    _check_default_backend(config.backend)
    _check_callfs_additions(config)
    return _warnings(config)


def _check_server(s: ServerConfig) -> None:
    if not s.listen_addr:
        _fail("server.listen_addr is required")
    s.protocol = s.protocol.lower() or "https"
    if s.protocol not in ("http", "https", "auto"):
        _fail("server.protocol must be one of: http, https, auto")
    has_files = bool(s.cert_file and s.key_file)
    if s.protocol == "https" and not has_files:
        _fail("server.cert_file and server.key_file are required when server.protocol=https")
    if s.enable_quic and not has_files:
        _fail("server.cert_file and server.key_file are required when server.enable_quic=true")
    if s.enable_quic and not s.quic_listen_addr:
        _fail("server.quic_listen_addr is required when server.enable_quic=true")


def _check_metadata_store(config: Config) -> None:
    m = config.metadata_store
    m.type = m.type.lower() or "postgres"
    m.redis_key_prefix = m.redis_key_prefix or "callfs:"
    required = {"postgres": "dsn", "sqlite": "sqlite_path", "redis": "redis_addr"}
    if m.type in required:
        if not getattr(m, required[m.type]):
            _fail(
                f"metadata_store.{required[m.type]} is required "
                f"when metadata_store.type={m.type}"
            )
    elif m.type == "raft":
        config.raft.enabled = True
        _check_raft(config.raft)
    else:
        _fail("metadata_store.type must be one of: postgres, sqlite, redis, raft")


def _check_raft(r: RaftConfig) -> None:
    for key in ("node_id", "bind_addr", "data_dir"):
        if not getattr(r, key):
            _fail(f"raft.{key} is required when metadata_store.type=raft")
    for key in (
        "apply_timeout",
        "forward_timeout",
        "snapshot_interval",
        "snapshot_threshold",
        "retain_snapshot_count",
    ):
        if getattr(r, key) <= 0:
            _fail(f"raft.{key} must be > 0 when metadata_store.type=raft")


def _check_dlm(d: DLMConfig) -> None:
    d.type = d.type.lower() or "redis"
    if d.type == "redis":
        if not d.redis_addr:
            _fail("dlm.redis_addr is required when dlm.type=redis")
    elif d.type != "local":
        _fail("dlm.type must be one of: redis, local")
    if d.lock_ttl < 1:
        _fail("dlm.lock_ttl must be at least 1s")


def _check_ha(h: HAConfig) -> None:
    h.replica_backend = h.replica_backend.strip().lower()
    if h.replication_enabled and h.replica_backend not in ("localfs", "s3"):
        _fail(
            "ha.replica_backend must be one of: localfs, s3 when ha.replication_enabled=true"
        )


_API_USER_ID = re.compile(r"api-user-[0-9]+")


def is_reserved_user(user_id: str) -> bool:
    """Identities a configured key may not claim (API.md §4)."""
    name = user_id.strip()
    return name in ("root", "internal-proxy") or bool(_API_USER_ID.fullmatch(name))


def _check_key(section: str, key: str) -> None:
    if key == PLACEHOLDER_API_KEY:
        _fail(f"{section} must not use default value '{PLACEHOLDER_API_KEY}'")
    if len(key.encode()) < MIN_KEY_BYTES:
        _fail(f"{section}: each key must be at least {MIN_KEY_BYTES} characters")


def _check_api_keys(a: AuthConfig) -> None:
    if not a.api_keys and not a.api_key_users:
        _fail("auth.api_keys or auth.api_key_users must contain at least one key")
    owners: dict[str, str] = {}
    for index, key in enumerate(a.api_keys):
        _check_key("auth.api_keys", key)
        if key in owners:
            _fail(f"auth.api_keys: key at index {index} is already configured for {owners[key]}")
        owners[key] = f"api_keys index {index}"
    for user_id in sorted(a.api_key_users):
        key = a.api_key_users[user_id]
        if not user_id.strip():
            _fail("auth.api_key_users: user ID must not be empty")
        if is_reserved_user(user_id):
            _fail(f"auth.api_key_users: user ID {_quote(user_id)} is reserved")
        _check_key("auth.api_key_users", key)
        if key in owners:
            _fail(
                f"auth.api_key_users: key for {_quote(user_id)} "
                f"is already configured for {owners[key]}"
            )
        owners[key] = f"api_key_users {_quote(user_id)}"


def _check_secrets(a: AuthConfig) -> None:
    if a.internal_proxy_secret in a.api_keys or a.internal_proxy_secret in set(
        a.api_key_users.values()
    ):
        _fail("auth.internal_proxy_secret must not be reused as an API key")
    if a.internal_proxy_secret in ("", DEFAULT_INTERNAL_SECRET):
        _fail("auth.internal_proxy_secret must be set and not use default value")
    if a.single_use_link_secret in ("", DEFAULT_LINK_SECRET):
        _fail("auth.single_use_link_secret must be set and not use default value")


def _check_erasure(e: ErasureConfig) -> None:
    if not e.enabled:
        return
    if e.data_shards < 2:
        e.data_shards = 4
    if e.parity_shards < 1:
        e.parity_shards = 2
    if e.data_shards + e.parity_shards > 256:
        _fail("erasure.data_shards + erasure.parity_shards must not exceed 256")


def _check_default_backend(b: BackendConfig) -> None:
    name = b.default_backend.strip().lower() or "localfs"
    if name not in ("localfs", "s3"):
        _fail(
            "backend.default_backend must be one of: localfs, s3 "
            f"(got {_quote(b.default_backend)})"
        )
    b.default_backend = name


def _has_control(name: str) -> bool:
    """A user ID or group name travels in headers and logs: no C0/C1 control characters."""
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in name)


def _check_callfs_additions(config: Config) -> None:
    """Checks of the CallFS-only keys, after the reference's so its files behave the same."""
    a = config.auth
    a.permission_model = a.permission_model.strip().lower() or "unix"
    if a.permission_model not in ("unix", "owner"):
        _fail("auth.permission_model must be one of: unix, owner")
    for key in ("default_file_mode", "default_dir_mode"):
        if not 0 <= getattr(a, key) <= 0o7777:
            _fail(f"auth.{key} must be between 0000 and 7777")
    for user_id in sorted(a.api_key_users):
        if _has_control(user_id):
            _fail(f"auth.api_key_users: user ID {_quote(user_id)} must not contain control "
                  "characters")
    for group in sorted(a.groups):
        if not group.strip():
            _fail("auth.groups: group name must not be empty")
        if is_reserved_user(group):
            _fail(f"auth.groups: group name {_quote(group)} is reserved")
        if _has_control(group):
            _fail(f"auth.groups: group name {_quote(group)} must not contain control characters")
    if not MIN_PART_SIZE <= config.backend.s3_part_size <= MAX_PART_SIZE:
        _fail("backend.s3_part_size must be between 5MiB and 5GiB")
    _check_address("server.listen_addr", config.server.listen_addr)
    if config.server.enable_quic:
        _check_address("server.quic_listen_addr", config.server.quic_listen_addr)
    if config.metrics.listen_addr:
        _check_address("metrics.listen_addr", config.metrics.listen_addr)


def split_host_port(addr: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface, host None); ValueError says why."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError("want host:port, or :port for every interface")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets, as in [::1]:8443")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {_quote(port)} is not a number from 1 to 65535")
    return (host or None), int(port)


def _check_address(key: str, addr: str) -> None:
    """The address is one the server can listen on, so validate refuses what start would."""
    try:
        split_host_port(addr)
    except ValueError as exc:
        _fail(f"{key} {_quote(addr)}: {exc}")


# What this build serves; `config validate` accepts the other types of §5 (CONFIG.md §5.6)
# and says that `callfs server` will refuse them.
AVAILABLE_STORES = ("sqlite", "postgres")
AVAILABLE_BACKENDS = ("localfs", "s3")


def unavailable(config: Config) -> str | None:
    """Why this build cannot serve a valid configuration, or None."""
    m, b = config.metadata_store, config.backend
    if m.type not in AVAILABLE_STORES:
        return (f"metadata_store.type {m.type} is not available in this build; "
                "use sqlite or postgres")
    if (b.default_backend or "localfs") not in AVAILABLE_BACKENDS:
        return (f"backend.default_backend {b.default_backend} is not available in this build; "
                "use localfs or s3")
    if b.default_backend == "s3" and not b.s3_bucket_name:
        return "backend.default_backend s3 needs backend.s3_bucket_name (empty disables S3)"
    if b.s3_bucket_name and b.s3_endpoint:
        endpoint = urllib.parse.urlsplit(b.s3_endpoint)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            return (f"backend.s3_endpoint {b.s3_endpoint!r} is not a URL: give it as "
                    "http://host:port or https://host:port")
    return None


def configured_users(a: AuthConfig) -> set[str]:
    """Every identity an API key authenticates as."""
    return {f"api-user-{n}" for n in range(len(a.api_keys))} | set(a.api_key_users)


def _warnings(config: Config) -> list[str]:
    a = config.auth
    warnings = []
    if a.api_keys:
        warnings.append(
            "auth.api_keys: positional keys authenticate as api-user-<n>; "
            "removing or reordering entries changes which key owns which files"
        )
    if len(a.internal_proxy_secret.encode()) < MIN_KEY_BYTES:
        warnings.append(
            f"auth.internal_proxy_secret is shorter than {MIN_KEY_BYTES} characters"
        )
    users = configured_users(a)
    for group in sorted(a.groups):
        for member in a.groups[group]:
            if member not in users:
                warnings.append(
                    f"auth.groups: member {_quote(member)} of group "
                    f"{_quote(group)} is not a configured user"
                )
    return warnings


# --- presentation -----------------------------------------------------------------------


def mask_dsn(dsn: str) -> str:
    """Hide a DSN's credentials for display (CONFIG.md §7.2); lengths count bytes."""
    raw = dsn.encode()
    if not raw:
        return ""
    if len(raw) <= 20:
        return "***"
    return (raw[:10] + b"***" + raw[-7:]).decode(errors="replace")


_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)


def redact_dsn(dsn: str) -> str:
    """A DSN to show in full but for its password (`postgres://u:***@db/x`); the contract's
    mask_dsn keeps a DSN's last characters, which may be the password's."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:  # key=value form
        return _KV_PASSWORD.sub(r"\1***", dsn)
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo.split("/")[0]:
        return _KV_PASSWORD.sub(r"\1***", dsn)  # ?password=… in the query
    user = userinfo.partition(":")[0]
    return _KV_PASSWORD.sub(r"\1***", f"{scheme}://{user}:***@{host}")


def uses_tls(server: ServerConfig) -> bool:
    """`https`, or `auto` with both certificate files configured (§5.1)."""
    if server.protocol == "https":
        return True
    return server.protocol == "auto" and bool(server.cert_file and server.key_file)


def base_url(server: ServerConfig) -> str:
    """This node's URL for clients: http only when external_url says so (§5.1)."""
    url = server.external_url.rstrip("/")
    if url.startswith(("http://", "https://")):
        return url
    return f"https://{url}"
