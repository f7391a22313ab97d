"""Configuration loading and validation against CONFIG.md (§1–§6)."""

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callfs import config
from callfs.config import ConfigError, load, mask_dsn
from callfs.configparse import (
    ConversionError,
    CoreSchemaLoader,
    parse_duration,
    parse_int,
    parse_size,
    to_bool,
    to_mode,
    to_str,
)

ALICE_KEY = "alice-key-0123456789"
BOB_KEY = "bob-key-0123456789ab"
POSITIONAL_KEY = "positional-key-0123456789"


def valid() -> dict:
    """A minimal valid configuration: no external service, no certificates."""
    return {
        "server": {"protocol": "http"},
        "auth": {
            "api_key_users": {"alice": ALICE_KEY},
            "internal_proxy_secret": "internal-secret-0123456789",
            "single_use_link_secret": "link-secret-0123456789",
        },
        "metadata_store": {"type": "sqlite"},
        "dlm": {"type": "local"},
    }


def with_(tree: dict, dotted: str, value) -> dict:
    section, key = dotted.split(".", 1)
    tree.setdefault(section, {})[key] = value
    return tree


def write(tmp_path, text: str, name: str = "config.yaml") -> str:
    (tmp_path / name).write_text(text)
    return name


def load_tree(tmp_path, tree: dict, env: dict | None = None) -> config.Loaded:
    write(tmp_path, json.dumps(tree), "config.json")
    return load(environ=env or {}, cwd=str(tmp_path))


def load_yaml(tmp_path, text: str, env: dict | None = None) -> config.Loaded:
    write(tmp_path, text)
    return load(environ=env or {}, cwd=str(tmp_path))


def error_of(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def validation_error(tmp_path, tree: dict) -> str:
    return error_of(lambda: load_tree(tmp_path, tree))


# --- §5 defaults ------------------------------------------------------------------------


def test_defaults_match_the_contract(tmp_path):
    cfg = load_tree(tmp_path, valid()).config
    assert cfg.server.listen_addr == ":8443"
    assert cfg.server.external_url == "localhost:8443"
    assert (cfg.server.cert_file, cfg.server.key_file) == ("server.crt", "server.key")
    assert cfg.server.quic_listen_addr == ":8443" and cfg.server.enable_quic is False
    assert (cfg.server.read_timeout, cfg.server.write_timeout) == (30.0, 30.0)
    assert (cfg.server.file_op_timeout, cfg.server.metadata_op_timeout) == (10.0, 5.0)
    assert cfg.auth.api_keys == [] and cfg.auth.groups == {}
    assert cfg.auth.permission_model == "unix"
    assert (cfg.auth.default_file_mode, cfg.auth.default_dir_mode) == (0o644, 0o755)
    assert (cfg.log.level, cfg.log.format, cfg.metrics.listen_addr) == ("info", "json", ":9090")
    b = cfg.backend
    assert (b.default_backend, b.localfs_root_path, b.localfs_fsync) == (
        "localfs",
        "/var/lib/callfs",
        True,
    )
    assert (b.s3_region, b.s3_server_side_encryption, b.s3_acl) == (
        "us-east-1",
        "AES256",
        "private",
    )
    assert (b.s3_bucket_name, b.s3_prefix, b.s3_part_size) == ("", "", 16 * 1024 * 1024)
    assert b.internal_proxy_skip_tls_verify is False
    m = cfg.metadata_store
    assert m.dsn == "postgres://callfs:callfs@localhost/callfs?sslmode=require"
    assert (m.sqlite_path, m.redis_addr, m.redis_db, m.redis_key_prefix) == (
        "./callfs.sqlite3",
        "localhost:6379",
        0,
        "callfs:",
    )
    r = cfg.raft
    assert (r.enabled, r.node_id, r.bind_addr, r.data_dir) == (
        False,
        "callfs-node-1",
        "127.0.0.1:7000",
        "./raft",
    )
    assert (r.apply_timeout, r.forward_timeout, r.snapshot_interval) == (10.0, 10.0, 60.0)
    assert (r.snapshot_threshold, r.retain_snapshot_count) == (256, 2)
    assert (cfg.dlm.redis_addr, cfg.dlm.redis_password) == ("localhost:6379", "")
    assert cfg.dlm.lock_ttl == 30.0
    assert (cfg.ha.replication_enabled, cfg.ha.replica_backend) == (False, "")
    assert (cfg.erasure.enabled, cfg.erasure.data_shards, cfg.erasure.parity_shards) == (
        False,
        0,
        0,
    )
    assert cfg.instance_discovery.instance_id == "callfs-instance-1"
    assert cfg.instance_discovery.peer_endpoints == {}


# --- §6 validation: each row and its exact message --------------------------------------

RAFT = {"metadata_store.type": "raft"}

VALIDATION_ROWS = [
    ({"server.listen_addr": ""}, "server.listen_addr is required"),
    ({"server.protocol": "ftp"}, "server.protocol must be one of: http, https, auto"),
    (
        {"server.protocol": "https", "server.cert_file": ""},
        "server.cert_file and server.key_file are required when server.protocol=https",
    ),
    (
        {"server.protocol": "", "server.key_file": ""},
        "server.cert_file and server.key_file are required when server.protocol=https",
    ),
    (
        {"server.enable_quic": True, "server.key_file": ""},
        "server.cert_file and server.key_file are required when server.enable_quic=true",
    ),
    (
        {"server.enable_quic": True, "server.quic_listen_addr": ""},
        "server.quic_listen_addr is required when server.enable_quic=true",
    ),
    (
        {"metadata_store.type": "postgres", "metadata_store.dsn": ""},
        "metadata_store.dsn is required when metadata_store.type=postgres",
    ),
    (
        {"metadata_store.type": "", "metadata_store.dsn": ""},
        "metadata_store.dsn is required when metadata_store.type=postgres",
    ),
    (
        {"metadata_store.sqlite_path": ""},
        "metadata_store.sqlite_path is required when metadata_store.type=sqlite",
    ),
    (
        {"metadata_store.type": "redis", "metadata_store.redis_addr": ""},
        "metadata_store.redis_addr is required when metadata_store.type=redis",
    ),
    *[
        ({**RAFT, f"raft.{key}": ""}, f"raft.{key} is required when metadata_store.type=raft")
        for key in ("node_id", "bind_addr", "data_dir")
    ],
    *[
        ({**RAFT, f"raft.{key}": value}, f"raft.{key} must be > 0 when metadata_store.type=raft")
        for key, value in (
            ("apply_timeout", "0s"),
            ("forward_timeout", "-1s"),
            ("snapshot_interval", "0"),
            ("snapshot_threshold", 0),
            ("retain_snapshot_count", -1),
        )
    ],
    (
        {"metadata_store.type": "mysql"},
        "metadata_store.type must be one of: postgres, sqlite, redis, raft",
    ),
    (
        {"metadata_store.type": " sqlite"},
        "metadata_store.type must be one of: postgres, sqlite, redis, raft",
    ),
    (
        {"dlm.type": "redis", "dlm.redis_addr": ""},
        "dlm.redis_addr is required when dlm.type=redis",
    ),
    ({"dlm.type": "", "dlm.redis_addr": ""}, "dlm.redis_addr is required when dlm.type=redis"),
    ({"dlm.type": "etcd"}, "dlm.type must be one of: redis, local"),
    ({"dlm.lock_ttl": "500ms"}, "dlm.lock_ttl must be at least 1s"),
    ({"dlm.type": "local", "dlm.lock_ttl": "0s"}, "dlm.lock_ttl must be at least 1s"),
    (
        {"ha.replication_enabled": True},
        "ha.replica_backend must be one of: localfs, s3 when ha.replication_enabled=true",
    ),
    (
        {"ha.replication_enabled": True, "ha.replica_backend": "gcs"},
        "ha.replica_backend must be one of: localfs, s3 when ha.replication_enabled=true",
    ),
    ({"instance_discovery.instance_id": ""}, "instance_discovery.instance_id is required"),
    (
        {"auth.api_key_users": {}},
        "auth.api_keys or auth.api_key_users must contain at least one key",
    ),
    (
        {"auth.api_keys": ["default-api-key"]},
        "auth.api_keys must not use default value 'default-api-key'",
    ),
    ({"auth.api_keys": ["short"]}, "auth.api_keys: each key must be at least 16 characters"),
    (
        {"auth.api_keys": [POSITIONAL_KEY, BOB_KEY, POSITIONAL_KEY]},
        "auth.api_keys: key at index 2 is already configured for api_keys index 0",
    ),
    ({"auth.api_key_users": {"": ALICE_KEY}}, "auth.api_key_users: user ID must not be empty"),
    ({"auth.api_key_users": {"  ": ALICE_KEY}}, "auth.api_key_users: user ID must not be empty"),
    *[
        (
            {"auth.api_key_users": {user: ALICE_KEY}},
            f'auth.api_key_users: user ID "{user}" is reserved',
        )
        for user in ("root", "internal-proxy", "api-user-0", "api-user-17")
    ],
    (
        {"auth.api_key_users": {"bob": "default-api-key"}},
        "auth.api_key_users must not use default value 'default-api-key'",
    ),
    (
        {"auth.api_key_users": {"bob": "fifteen-chars.."}},
        "auth.api_key_users: each key must be at least 16 characters",
    ),
    (
        {"auth.api_keys": [ALICE_KEY], "auth.api_key_users": {"bob": ALICE_KEY}},
        'auth.api_key_users: key for "bob" is already configured for api_keys index 0',
    ),
    (
        {"auth.api_key_users": {"bob": ALICE_KEY, "alice": ALICE_KEY}},
        'auth.api_key_users: key for "bob" is already configured for api_key_users "alice"',
    ),
    (
        {"auth.internal_proxy_secret": ALICE_KEY},
        "auth.internal_proxy_secret must not be reused as an API key",
    ),
    (
        {"auth.api_keys": [POSITIONAL_KEY], "auth.internal_proxy_secret": POSITIONAL_KEY},
        "auth.internal_proxy_secret must not be reused as an API key",
    ),
    (
        {"auth.internal_proxy_secret": ""},
        "auth.internal_proxy_secret must be set and not use default value",
    ),
    (
        {"auth.internal_proxy_secret": "change-me-internal-secret"},
        "auth.internal_proxy_secret must be set and not use default value",
    ),
    (
        {"auth.single_use_link_secret": ""},
        "auth.single_use_link_secret must be set and not use default value",
    ),
    (
        {"auth.single_use_link_secret": "change-me-link-secret"},
        "auth.single_use_link_secret must be set and not use default value",
    ),
    (
        {"erasure.enabled": True, "erasure.data_shards": 200, "erasure.parity_shards": 57},
        "erasure.data_shards + erasure.parity_shards must not exceed 256",
    ),
    (
        {"backend.default_backend": "gcs"},
        'backend.default_backend must be one of: localfs, s3 (got "gcs")',
    ),
    ({"auth.permission_model": "acl"}, "auth.permission_model must be one of: unix, owner"),
    ({"auth.default_file_mode": "10000"}, "auth.default_file_mode must be between 0000 and 7777"),
    ({"auth.default_dir_mode": "17777"}, "auth.default_dir_mode must be between 0000 and 7777"),
    ({"auth.groups": {"root": ["alice"]}}, 'auth.groups: group name "root" is reserved'),
    ({"auth.groups": {"": ["alice"]}}, "auth.groups: group name must not be empty"),
    ({"auth.groups": {"a\nb": ["alice"]}},
     'auth.groups: group name "a\\nb" must not contain control characters'),
    ({"auth.api_key_users": {"eve\r\nX-Injected: 1": "eve-key-0123456789abcdef"}},
     'auth.api_key_users: user ID "eve\\r\\nX-Injected: 1" must not contain control characters'),
    ({"backend.s3_part_size": "4MiB"}, "backend.s3_part_size must be between 5MiB and 5GiB"),
    ({"backend.s3_part_size": "6GiB"}, "backend.s3_part_size must be between 5MiB and 5GiB"),
]


@pytest.mark.parametrize(
    "changes,message", VALIDATION_ROWS, ids=[m[:60] for _, m in VALIDATION_ROWS]
)
def test_validation_rows(tmp_path, changes, message):
    tree = valid()
    for dotted, value in changes.items():
        with_(tree, dotted, value)
    assert validation_error(tmp_path, tree) == f"config validation failed: {message}"


ORDER_PAIRS = [
    ("server.listen_addr", "", "server.protocol", "ftp"),
    ("server.protocol", "ftp", "metadata_store.type", "mysql"),
    ("metadata_store.type", "mysql", "dlm.type", "etcd"),
    ("dlm.type", "etcd", "ha.replication_enabled", True),
    ("ha.replication_enabled", True, "instance_discovery.instance_id", ""),
    ("instance_discovery.instance_id", "", "auth.api_key_users", {}),
    ("auth.api_keys", ["short"], "auth.api_key_users", {"root": ALICE_KEY}),
    ("auth.api_key_users", {"root": ALICE_KEY}, "auth.internal_proxy_secret", ""),
    ("auth.internal_proxy_secret", "", "auth.single_use_link_secret", ""),
    ("auth.single_use_link_secret", "", "erasure.data_shards", 300),
    ("erasure.data_shards", 300, "backend.default_backend", "gcs"),
    ("backend.default_backend", "gcs", "auth.permission_model", "acl"),
]


@pytest.mark.parametrize("first_key,first_value,later_key,later_value", ORDER_PAIRS)
def test_first_failure_wins(tmp_path, first_key, first_value, later_key, later_value):
    alone = with_(valid(), first_key, first_value)
    if first_key == "erasure.data_shards":
        with_(alone, "erasure.enabled", True)
    expected = validation_error(tmp_path, alone)
    both = with_(alone, later_key, later_value)
    assert validation_error(tmp_path, both) == expected


def test_fill_ins(tmp_path):
    tree = valid()
    with_(tree, "server.protocol", "AUTO")
    with_(tree, "metadata_store.type", "SQLite")
    with_(tree, "dlm.type", "")
    with_(tree, "backend.default_backend", " S3 ")
    with_(tree, "ha.replication_enabled", True)
    with_(tree, "ha.replica_backend", " LocalFS ")
    with_(tree, "erasure.enabled", True)
    with_(tree, "auth.permission_model", "Owner")
    with_(tree, "metadata_store.redis_key_prefix", "")
    cfg = load_tree(tmp_path, tree).config
    assert cfg.server.protocol == "auto"
    assert cfg.metadata_store.type == "sqlite"
    assert cfg.metadata_store.redis_key_prefix == "callfs:"
    assert cfg.dlm.type == "redis"
    assert cfg.backend.default_backend == "s3"
    assert cfg.ha.replica_backend == "localfs"
    assert (cfg.erasure.data_shards, cfg.erasure.parity_shards) == (4, 2)
    assert cfg.auth.permission_model == "owner"


def test_empty_protocol_and_type_mean_https_and_postgres(tmp_path):
    tree = with_(with_(valid(), "server.protocol", ""), "metadata_store.type", "")
    cfg = load_tree(tmp_path, tree).config
    assert (cfg.server.protocol, cfg.metadata_store.type) == ("https", "postgres")


def test_raft_type_forces_raft_enabled(tmp_path):
    cfg = load_tree(tmp_path, with_(valid(), "metadata_store.type", "RAFT")).config
    assert cfg.raft.enabled is True
    cfg = load_tree(tmp_path, with_(valid(), "raft.enabled", False)).config
    assert cfg.raft.enabled is False


def test_erasure_disabled_keeps_values(tmp_path):
    tree = with_(with_(valid(), "erasure.data_shards", 1), "erasure.parity_shards", 300)
    cfg = load_tree(tmp_path, tree).config
    assert (cfg.erasure.data_shards, cfg.erasure.parity_shards) == (1, 300)


def test_erasure_keeps_explicit_shards(tmp_path):
    tree = with_(valid(), "erasure.enabled", True)
    with_(tree, "erasure.data_shards", 10)
    with_(tree, "erasure.parity_shards", 246)
    cfg = load_tree(tmp_path, tree).config
    assert (cfg.erasure.data_shards, cfg.erasure.parity_shards) == (10, 246)


def test_key_length_counts_bytes(tmp_path):
    eight_two_byte_chars = "é" * 8
    cfg = load_tree(tmp_path, with_(valid(), "auth.api_keys", [eight_two_byte_chars])).config
    assert cfg.auth.api_keys == [eight_two_byte_chars]


def test_key_compared_without_trimming(tmp_path):
    tree = with_(valid(), "auth.api_key_users", {"alice": ALICE_KEY, "bob": f" {ALICE_KEY}"})
    assert load_tree(tmp_path, tree).config.auth.api_key_users["bob"] == f" {ALICE_KEY}"


def test_api_user_prefix_without_digits_is_not_reserved(tmp_path):
    tree = with_(valid(), "auth.api_key_users", {"api-user-x": ALICE_KEY})
    assert "api-user-x" in load_tree(tmp_path, tree).config.auth.api_key_users


def test_api_keys_alone_are_enough(tmp_path):
    tree = with_(with_(valid(), "auth.api_key_users", {}), "auth.api_keys", [POSITIONAL_KEY])
    loaded = load_tree(tmp_path, tree)
    assert loaded.config.auth.api_keys == [POSITIONAL_KEY]
    assert any("api-user-<n>" in w for w in loaded.warnings)


def test_warnings(tmp_path):
    tree = with_(valid(), "auth.internal_proxy_secret", "short-secret")
    with_(tree, "auth.groups", {"dev": ["alice", "mallory"]})
    warnings = load_tree(tmp_path, tree).warnings
    assert "auth.internal_proxy_secret is shorter than 16 characters" in warnings
    assert 'auth.groups: member "mallory" of group "dev" is not a configured user' in warnings
    assert not any('"alice"' in w for w in warnings)


def test_part_size_bounds_inclusive(tmp_path):
    for size, expected in (("5MiB", 5 * 2**20), ("5GiB", 5 * 2**30)):
        cfg = load_tree(tmp_path, with_(valid(), "backend.s3_part_size", size)).config
        assert cfg.backend.s3_part_size == expected


# --- §4 conversions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("1500μs", 0.0015),
        ("10ns", 1e-8),
        ("-1.5s", -1.5),
        ("+2m", 120.0),
        ("0", 0.0),
        ("-0", 0.0),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("1h0m0.5s", 3600.5),
        ("0s", 0.0),
    ],
)
def test_duration_syntax(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "30", "00", "s", ".s", "1x", "1 s", "1s ", "--1s", "1.2.3s", "1e3s", "3000000h"]
)
def test_duration_errors(text):
    with pytest.raises(ConversionError):
        parse_duration(text)


@given(st.integers(0, 2000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_duration_parts_add_up(hours, minutes, seconds, millis):
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    expected = hours * 3600 + minutes * 60 + seconds + millis / 1000
    assert parse_duration(text) == pytest.approx(expected)


def test_bare_yaml_number_is_nanoseconds(tmp_path):
    loaded = load_yaml(tmp_path, "server:\n  read_timeout: 30\n  write_timeout: 2.5e9\n", BASE_ENV)
    assert loaded.config.server.read_timeout == pytest.approx(30e-9)
    assert loaded.config.server.write_timeout == pytest.approx(2.5)


@pytest.mark.parametrize("value", ['"30"', '""', "true", "[1s]"])
def test_bad_durations_fail_to_load(tmp_path, value):
    message = error_of(lambda: load_yaml(tmp_path, f"server:\n  read_timeout: {value}\n"))
    assert message.startswith("failed to unmarshal config: server.read_timeout: ")


def test_duration_error_message(tmp_path):
    message = error_of(lambda: load_yaml(tmp_path, 'server:\n  read_timeout: "30"\n'))
    assert message == (
        "failed to unmarshal config: server.read_timeout: "
        'invalid duration "30": missing unit (ns, us, ms, s, m or h)'
    )


@pytest.mark.parametrize(
    "text,number",
    [
        ("0", 0),
        ("", 0),
        ("42", 42),
        ("-42", -42),
        ("+7", 7),
        ("0x1F", 31),
        ("0X1f", 31),
        ("0o17", 15),
        ("017", 15),
        ("-017", -15),
        ("0b101", 5),
        ("1_000", 1000),
    ],
)
def test_int_syntax(text, number):
    assert parse_int(text) == number


@pytest.mark.parametrize("text", ["08", "0x", "1.5", " 1", "1 ", "abc", "0xZ", "9" * 20])
def test_int_errors(text):
    with pytest.raises(ConversionError):
        parse_int(text)


@given(st.integers(-(2**63), 2**63 - 1))
def test_int_prefixes_round_trip(number):
    sign = "-" if number < 0 else ""
    magnitude = abs(number)
    for spec in ("d", "#x", "#o", "#b"):
        assert parse_int(f"{sign}{magnitude:{spec}}") == number
    if magnitude:
        assert parse_int(f"{sign}0{magnitude:o}") == number


@pytest.mark.parametrize(
    "text,value",
    [
        *[(t, True) for t in ("1", "t", "T", "TRUE", "true", "True")],
        *[(t, False) for t in ("0", "f", "F", "FALSE", "false", "False", "")],
    ],
)
def test_bool_from_string(text, value):
    assert to_bool(text) is value


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "tRuE", "2", " true"])
def test_bool_errors(text):
    with pytest.raises(ConversionError):
        to_bool(text)


def test_string_from_scalars():
    assert [to_str(v) for v in (8443, True, False, 1.5, 2.0, 1e20, "x")] == [
        "8443",
        "1",
        "0",
        "1.5",
        "2",
        "100000000000000000000",
        "x",
    ]


def test_mode_and_size_syntax():
    modes = [to_mode(v) for v in ("0644", "644", "0o750", "0", 755)]
    assert modes == [0o644, 0o644, 0o750, 0, 0o755]
    assert [parse_size(v) for v in ("16MiB", "5GiB", "10MB", "8m", "512", "1.5KiB")] == [
        16 * 2**20,
        5 * 2**30,
        10_000_000,
        8 * 2**20,
        512,
        1536,
    ]
    for bad in ("0999", "rwx", ""):
        with pytest.raises(ConversionError):
            to_mode(bad)
    with pytest.raises(ConversionError):
        parse_size("16 parsecs")


# --- YAML 1.2 core schema ---------------------------------------------------------------


def test_yaml_core_schema_scalars():
    import yaml

    doc = yaml.load(
        "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: FALSE\ng: TrUe\n"
        "h: 2024-01-01\ni: 1:30\nj: 0o17\nk: 017\nl: 0x1f\nm: 1e3\nn: ~\no: '1'\n",
        Loader=CoreSchemaLoader,
    )
    assert doc == {
        "a": "yes",
        "b": "No",
        "c": "on",
        "d": "OFF",
        "e": True,
        "f": False,
        "g": True,
        "h": "2024-01-01",
        "i": "1:30",
        "j": 15,
        "k": 17,
        "l": 31,
        "m": 1000.0,
        "n": None,
        "o": "1",
    }


def test_yaml_yes_is_not_a_boolean(tmp_path):
    message = error_of(lambda: load_yaml(tmp_path, "server:\n  enable_quic: yes\n"))
    assert message == 'failed to unmarshal config: server.enable_quic: invalid boolean "yes"'


def test_yaml_values_turned_into_strings(tmp_path):
    text = (
        "server:\n  quic_listen_addr: 8443\n  external_url: on\n"
        "instance_discovery:\n  instance_id: 2024-01-01\n"
        "log:\n  level: true\n  format: '0123'\n"
    )
    loaded = load_yaml(tmp_path, text, {"CALLFS_AUTH__API_KEYS": POSITIONAL_KEY, **SECRETS_ENV})
    cfg = loaded.config
    assert cfg.server.quic_listen_addr == "8443"
    assert cfg.server.external_url == "on"
    assert cfg.instance_discovery.instance_id == "2024-01-01"
    assert (cfg.log.level, cfg.log.format) == ("1", "0123")


def test_numbers_for_bools_and_ints(tmp_path):
    tree = with_(valid(), "server.enable_quic", 0)
    with_(tree, "metadata_store.redis_db", "0x10")
    with_(tree, "raft.snapshot_threshold", "0o10")
    with_(tree, "erasure.min_file_size", 1048576.0)
    cfg = load_tree(tmp_path, tree).config
    assert cfg.server.enable_quic is False
    assert (cfg.metadata_store.redis_db, cfg.raft.snapshot_threshold) == (16, 8)
    assert cfg.erasure.min_file_size == 1048576


@pytest.mark.parametrize(
    "dotted,value",
    [
        ("raft.snapshot_threshold", -1),
        ("metadata_store.redis_db", "one"),
        ("metadata_store.redis_db", True),
        ("auth.api_keys", {"a": "b"}),
        ("auth.api_key_users", "alice"),
        ("auth.api_key_users", ["alice"]),
        ("instance_discovery.peer_endpoints", {"n2": {"url": "x"}}),
        ("server.listen_addr", [":1"]),
        ("auth.default_file_mode", "rw-r--r--"),
        ("backend.s3_part_size", "big"),
    ],
)
def test_wrong_shapes_fail_to_load(tmp_path, dotted, value):
    message = validation_error(tmp_path, with_(valid(), dotted, value))
    assert message.startswith(f"failed to unmarshal config: {dotted}: ")


def test_section_of_wrong_shape(tmp_path):
    tree = valid()
    tree["log"] = "debug"
    assert validation_error(tmp_path, tree).startswith("failed to unmarshal config: log: ")


def test_null_means_unset_and_empty(tmp_path):
    text = (
        "server:\n  listen_addr: null\n  protocol: http\n"
        "auth:\n  api_keys:\n  api_key_users: {alice: " + ALICE_KEY + "}\n"
        "  internal_proxy_secret: internal-secret-0123456789\n"
        "  single_use_link_secret: link-secret-0123456789\n"
        "metadata_store: {type: sqlite}\ndlm: {type: local}\nlog:\n"
    )
    cfg = load_yaml(tmp_path, text).config
    assert cfg.server.listen_addr == ":8443"
    assert cfg.auth.api_keys == []


def test_scalar_list_is_one_element(tmp_path):
    tree = with_(valid(), "auth.api_keys", POSITIONAL_KEY)
    assert load_tree(tmp_path, tree).config.auth.api_keys == [POSITIONAL_KEY]


def test_groups_map_of_lists(tmp_path):
    tree = with_(valid(), "auth.groups", {"dev": ["alice"], "ops": "alice", "none": None})
    groups = load_tree(tmp_path, tree).config.auth.groups
    assert groups == {"dev": ["alice"], "ops": ["alice"], "none": []}


# --- §3 environment ---------------------------------------------------------------------

SECRETS_ENV = {
    "CALLFS_AUTH__INTERNAL_PROXY_SECRET": "internal-secret-0123456789",
    "CALLFS_AUTH__SINGLE_USE_LINK_SECRET": "link-secret-0123456789",
}
BASE_ENV = {
    **SECRETS_ENV,
    "CALLFS_SERVER__PROTOCOL": "http",
    "CALLFS_METADATA_STORE__TYPE": "sqlite",
    "CALLFS_DLM__TYPE": "local",
    "CALLFS_AUTH__API_KEY_USERS__ALICE": ALICE_KEY,
}


def load_env(tmp_path, **extra) -> config.Loaded:
    return load(environ={**BASE_ENV, **extra}, cwd=str(tmp_path))


def env_error(tmp_path, **extra) -> str:
    return error_of(lambda: load_env(tmp_path, **extra))


def test_env_only_configuration(tmp_path):
    loaded = load_env(
        tmp_path,
        CALLFS_SERVER__LISTEN_ADDR=":9999",
        CALLFS_LOG__LEVEL="error",
        CALLFS_METADATA_STORE__SQLITE_PATH="/data/m.db",
        CALLFS_SERVER__READ_TIMEOUT="1m",
        CALLFS_METADATA_STORE__REDIS_DB="0x0f",
        CALLFS_SERVER__ENABLE_QUIC="F",
    )
    cfg = loaded.config
    assert (loaded.source, loaded.path) == ("env", None)
    assert cfg.server.listen_addr == ":9999"
    assert cfg.log.level == "error"
    assert cfg.metadata_store.sqlite_path == "/data/m.db"
    assert cfg.server.read_timeout == 60.0
    assert cfg.metadata_store.redis_db == 15
    assert cfg.auth.api_key_users == {"alice": ALICE_KEY}


def test_env_map_entries_lower_cased(tmp_path):
    extra = {
        "CALLFS_AUTH__API_KEY_USERS__BOB": BOB_KEY,
        "CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2": "http://node2:8443",
        "CALLFS_RAFT__PEERS__NODE-2": "node2:7000",
        "CALLFS_RAFT__API_PEER_ENDPOINTS__NODE-2": "http://node2:8443",
        "CALLFS_AUTH__GROUPS__DEV": "alice",
    }
    cfg = load_env(tmp_path, **extra).config
    assert cfg.auth.api_key_users == {"alice": ALICE_KEY, "bob": BOB_KEY}
    assert cfg.instance_discovery.peer_endpoints == {"node-2": "http://node2:8443"}
    assert cfg.raft.peers == {"node-2": "node2:7000"}
    assert cfg.raft.api_peer_endpoints == {"node-2": "http://node2:8443"}
    assert cfg.auth.groups == {"dev": ["alice"]}


def test_env_map_key_itself_is_a_type_error(tmp_path):
    message = env_error(tmp_path, CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS="node-2=http://x")
    assert message.startswith("failed to unmarshal config: instance_discovery.peer_endpoints: ")


def test_env_section_itself_is_a_type_error(tmp_path):
    assert env_error(tmp_path, CALLFS_SERVER="x").startswith("failed to unmarshal config: server: ")


def test_env_list_is_one_element_not_split(tmp_path):
    key = "comma,separated-key-0123"
    assert load_env(tmp_path, CALLFS_AUTH__API_KEYS=key).config.auth.api_keys == [key]


@pytest.mark.parametrize(
    "name,shown",
    [
        ("CALLFS_SERVER_LISTEN_ADDR", "(did you mean CALLFS_SERVER__LISTEN_ADDR?)"),
        ("CALLFS_SERVER__LISTEN_ADR", "(did you mean CALLFS_SERVER__LISTEN_ADDR?)"),
        ("CALLFS_DLM__TPYE", "(did you mean CALLFS_DLM__TYPE?)"),
        ("CALLFS_SERVR__PROTOCOL", "(did you mean CALLFS_SERVER__PROTOCOL?)"),
        ("CALLFS_SERVER__LISTEN_ADDR__X", "(did you mean CALLFS_SERVER__LISTEN_ADDR?)"),
        ("CALLFS_STORAGE__PATH", ""),
    ],
)
def test_env_unknown_names_are_warnings_with_a_suggestion(tmp_path, name, shown):
    """CONFIG.md §3: unknown names under the prefix are ignored; CallFS says so."""
    loaded = load_env(tmp_path, **{name: "x"})
    assert loaded.config.server.listen_addr == ":8443"
    assert loaded.config.dlm.type == "local"
    assert loaded.unknown == [
        f"unknown environment variable {name} ignored {shown}".rstrip()
    ]
    assert not [w for w in loaded.warnings if name in w]


@pytest.mark.parametrize(
    "name,shown",
    [
        ("CALLFS_SERVER_LISTEN_ADDR", "(did you mean CALLFS_SERVER__LISTEN_ADDR?)"),
        ("CALLFS_DLM__TPYE", "(did you mean CALLFS_DLM__TYPE?)"),
        ("CALLFS_STORAGE__PATH", ""),
    ],
)
def test_env_unknown_names_are_errors_when_strict(tmp_path, name, shown):
    message = error_of(lambda: load(environ={**BASE_ENV, name: "x"}, cwd=str(tmp_path),
                                    strict=True))
    assert message == (
        f"config validation failed: unknown environment variable: {name} {shown}".rstrip()
    )


def test_env_names_not_shaped_like_keys_are_left_alone(tmp_path):
    loaded = load_env(tmp_path, CALLFS_VENV="/opt/venv", CALLFS_REFLINK_DIR="/mnt/x",
                      callfs_server__listen_addr="")
    assert loaded.config.server.listen_addr == ":8443"
    assert [w for w in loaded.warnings if "names no configuration key" in w] == [
        "CALLFS_REFLINK_DIR names no configuration key; ignored",
        "CALLFS_VENV names no configuration key; ignored",
    ]
    assert loaded.unknown == []
    strict = load(environ={**BASE_ENV, "CALLFS_VENV": "/opt/venv"}, cwd=str(tmp_path),
                  strict=True)
    assert strict.warnings == ["CALLFS_VENV names no configuration key; ignored"]


def test_unknown_keys_in_file_and_env_reported_together(tmp_path):
    write(tmp_path, "server:\n  listen_adr: ':1'\n")
    environ = {**BASE_ENV, "CALLFS_LOG__LEVLE": "x"}
    loaded = load(environ=environ, cwd=str(tmp_path))
    assert loaded.unknown == [
        "unknown key server.listen_adr ignored (did you mean server.listen_addr?)",
        "unknown environment variable CALLFS_LOG__LEVLE ignored "
        "(did you mean CALLFS_LOG__LEVEL?)",
    ]
    message = error_of(lambda: load(environ=environ, cwd=str(tmp_path), strict=True))
    assert message == (
        f"config validation failed: unknown key in {tmp_path / 'config.yaml'}: "
        "server.listen_adr (did you mean server.listen_addr?); "
        "unknown environment variable: CALLFS_LOG__LEVLE (did you mean CALLFS_LOG__LEVEL?)"
    )


def test_env_empty_values_are_applied(tmp_path):
    cfg = load_env(
        tmp_path,
        CALLFS_LOG__LEVEL="",
        CALLFS_SERVER__ENABLE_QUIC="",
        CALLFS_METADATA_STORE__REDIS_DB="",
    ).config
    assert (cfg.log.level, cfg.server.enable_quic, cfg.metadata_store.redis_db) == ("", False, 0)
    assert env_error(tmp_path, CALLFS_AUTH__API_KEYS="") == (
        "config validation failed: auth.api_keys: each key must be at least 16 characters"
    )
    assert env_error(tmp_path, CALLFS_SERVER__READ_TIMEOUT="") == (
        'failed to unmarshal config: server.read_timeout: invalid duration ""'
    )
    assert env_error(tmp_path, CALLFS_SERVER__LISTEN_ADDR="") == (
        "config validation failed: server.listen_addr is required"
    )


@pytest.mark.parametrize(
    "name,value",
    [
        ("CALLFS_SERVER__ENABLE_QUIC", "yes"),
        ("CALLFS_METADATA_STORE__REDIS_DB", "1.5"),
        ("CALLFS_SERVER__WRITE_TIMEOUT", "30"),
        ("CALLFS_RAFT__SNAPSHOT_THRESHOLD", "-5"),
    ],
)
def test_env_bad_values_fail_to_load(tmp_path, name, value):
    assert env_error(tmp_path, **{name: value}).startswith("failed to unmarshal config: ")


# --- §1 precedence and map merging ------------------------------------------------------


def test_env_overrides_file_and_maps_merge(tmp_path):
    tree = valid()
    with_(tree, "server.listen_addr", ":1111")
    with_(tree, "log.level", "debug")
    with_(tree, "auth.api_keys", [POSITIONAL_KEY])
    peers = {"node-2": "http://old", "node-3": "http://n3"}
    with_(tree, "instance_discovery.peer_endpoints", peers)
    loaded = load_tree(
        tmp_path,
        tree,
        {
            "CALLFS_SERVER__LISTEN_ADDR": ":2222",
            "CALLFS_AUTH__API_KEYS": "replacement-key-0123456789",
            "CALLFS_AUTH__API_KEY_USERS__BOB": BOB_KEY,
            "CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2": "http://new",
            "CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-4": "http://n4",
        },
    )
    cfg = loaded.config
    assert loaded.source == "file"
    assert cfg.server.listen_addr == ":2222"
    assert cfg.log.level == "debug"
    assert cfg.auth.api_keys == ["replacement-key-0123456789"]
    assert cfg.auth.api_key_users == {"alice": ALICE_KEY, "bob": BOB_KEY}
    assert cfg.instance_discovery.peer_endpoints == {
        "node-2": "http://new",
        "node-3": "http://n3",
        "node-4": "http://n4",
    }


def test_valid_env_value_hides_bad_file_value(tmp_path):
    tree = with_(valid(), "server.read_timeout", "30")
    loaded = load_tree(tmp_path, tree, {"CALLFS_SERVER__READ_TIMEOUT": "5s"})
    assert loaded.config.server.read_timeout == 5.0


# --- §2 file discovery and format -------------------------------------------------------


def test_discovery_order(tmp_path):
    write(tmp_path, json.dumps(with_(valid(), "log.level", "json")), "config.json")
    assert load(environ={}, cwd=str(tmp_path)).config.log.level == "json"
    write(tmp_path, json.dumps(with_(valid(), "log.level", "yml")), "config.yml")
    assert load(environ={}, cwd=str(tmp_path)).config.log.level == "yml"
    write(tmp_path, json.dumps(with_(valid(), "log.level", "yaml")), "config.yaml")
    loaded = load(environ={}, cwd=str(tmp_path))
    assert loaded.config.log.level == "yaml"
    assert loaded.path == str(tmp_path / "config.yaml")


def test_discovery_skips_directories(tmp_path):
    (tmp_path / "config.yaml").mkdir()
    write(tmp_path, json.dumps(valid()), "config.json")
    assert load(environ={}, cwd=str(tmp_path)).path == str(tmp_path / "config.json")


def test_explicit_path_wins(tmp_path):
    write(tmp_path, json.dumps(with_(valid(), "log.level", "default")), "config.yaml")
    name = write(tmp_path, json.dumps(with_(valid(), "log.level", "chosen")), "other.yml")
    loaded = load(name, environ={}, cwd=str(tmp_path))
    assert (loaded.source, loaded.config.log.level) == ("file", "chosen")


def test_explicit_path_missing(tmp_path):
    message = error_of(lambda: load("nope.yaml", environ={}, cwd=str(tmp_path)))
    assert message == "specified config file nope.yaml not found: no such file or directory"


@pytest.mark.parametrize("name", ["config.toml", "config.YAML", "config"])
def test_unsupported_extension(tmp_path, name):
    write(tmp_path, "server: {}\n", name)
    message = error_of(lambda: load(name, environ={}, cwd=str(tmp_path)))
    assert message == (
        f"failed to load config file {name}: "
        "unsupported file type (the name must end in .yaml, .yml or .json)"
    )


@pytest.mark.parametrize(
    "name,text",
    [
        ("config.yaml", "server:\n  listen_addr: [\n"),
        ("config.yaml", "- a\n- b\n"),
        ("config.yaml", "a: 1\n---\nb: 2\n"),
        ("config.json", "{"),
        ("config.json", ""),
        ("config.json", "[1]"),
    ],
)
def test_unparsable_files(tmp_path, name, text):
    write(tmp_path, text, name)
    message = error_of(lambda: load(environ={}, cwd=str(tmp_path)))
    assert message.startswith(f"failed to load config file {tmp_path / name}: ")


def test_empty_yaml_is_valid(tmp_path):
    write(tmp_path, "")
    loaded = load(environ=BASE_ENV, cwd=str(tmp_path))
    assert (loaded.source, loaded.config.server.protocol) == ("file", "http")


def tree_with_unknown_keys_at_every_level() -> dict:
    tree = valid()
    tree["storage"] = {"path": "/x"}
    tree["Server"] = {"listen_addr": ""}
    tree["listen_addr"] = ":1"
    with_(tree, "server.LISTEN_ADDR", "")
    with_(tree, "auth.internal_secret", "x")
    with_(tree, "dlm.tpye", "redis")
    with_(tree, "backend.sqlite_path", "x")
    return tree


def test_unknown_keys_are_warnings_at_every_level(tmp_path):
    """CONFIG.md §2.3: unknown keys and sections, and keys in another case, are ignored —
    never a failure — and each is named with the key probably meant."""
    loaded = load_tree(tmp_path, tree_with_unknown_keys_at_every_level())
    cfg = loaded.config
    assert (cfg.server.listen_addr, cfg.dlm.type, cfg.metadata_store.sqlite_path) == (
        ":8443", "local", "./callfs.sqlite3")
    assert loaded.unknown == [
        "unknown key server.LISTEN_ADDR ignored (did you mean server.listen_addr?)",
        "unknown key auth.internal_secret ignored (did you mean auth.internal_proxy_secret?)",
        "unknown key dlm.tpye ignored (did you mean dlm.type?)",
        "unknown section storage ignored",
        "unknown section Server ignored (did you mean server?)",
        "unknown key listen_addr ignored "
        "(did you mean server.listen_addr or metrics.listen_addr?)",
        "unknown key backend.sqlite_path ignored (did you mean metadata_store.sqlite_path?)",
    ]


def test_unknown_keys_are_errors_at_every_level_when_strict(tmp_path):
    write(tmp_path, json.dumps(tree_with_unknown_keys_at_every_level()), "config.json")
    message = error_of(lambda: load(environ={}, cwd=str(tmp_path), strict=True))
    assert message == (
        f"config validation failed: unknown keys in {tmp_path / 'config.json'}: "
        "server.LISTEN_ADDR (did you mean server.listen_addr?), "
        "auth.internal_secret (did you mean auth.internal_proxy_secret?), "
        "dlm.tpye (did you mean dlm.type?), "
        "storage, "
        "Server (did you mean server?), "
        "listen_addr (did you mean server.listen_addr or metrics.listen_addr?), "
        "backend.sqlite_path (did you mean metadata_store.sqlite_path?)"
    )


@pytest.mark.parametrize(
    "text,unknown",
    [
        ("server:\n  listen_adr: ':1'\n", "server.listen_adr (did you mean server.listen_addr?)"),
        ("dlm: {tpye: local}\n", "dlm.tpye (did you mean dlm.type?)"),
        ("metdata_store:\n  type: sqlite\n", "metdata_store (did you mean metadata_store?)"),
        ("auth:\n  api_key_user: {}\n", "auth.api_key_user (did you mean auth.api_key_users?)"),
    ],
)
def test_a_misspelt_key_names_the_key_meant(tmp_path, text, unknown):
    write(tmp_path, text)
    name, _, meant = unknown.partition(" ")
    kind = "section" if "." not in name else "key"
    loaded = load(environ=BASE_ENV, cwd=str(tmp_path))
    assert loaded.unknown == [f"unknown {kind} {name} ignored {meant}"]
    message = error_of(lambda: load(environ=BASE_ENV, cwd=str(tmp_path), strict=True))
    assert message == (
        f"config validation failed: unknown key in {tmp_path / 'config.yaml'}: {unknown}"
    )


def test_a_nested_misspelling_keeps_the_default(tmp_path):
    """`dlm: {tpye: local}` is ignored: the lock manager stays the default, Redis."""
    tree = valid()
    tree["dlm"] = {"tpye": "local"}
    loaded = load_tree(tmp_path, tree)
    assert loaded.config.dlm.type == "redis"
    assert loaded.unknown == ["unknown key dlm.tpye ignored (did you mean dlm.type?)"]


def test_map_entries_are_names_not_keys(tmp_path):
    tree = with_(valid(), "instance_discovery.peer_endpoints", {"nodee-2": "http://n2:1"})
    with_(tree, "auth.groups", {"dve": ["alice"]})
    cfg = load_tree(tmp_path, tree).config
    assert cfg.instance_discovery.peer_endpoints == {"nodee-2": "http://n2:1"}


def test_unknown_keys_come_with_the_error_they_may_explain(tmp_path):
    """A misspelt api_key_users makes "at least one key" fail: the error carries the warning
    that explains it; with strict, the unknown key is the error, before any other check."""
    tree = valid()
    tree["auth"]["api_key_user"] = tree["auth"].pop("api_key_users")
    write(tmp_path, json.dumps(tree), "config.json")
    with pytest.raises(ConfigError) as info:
        load(environ={}, cwd=str(tmp_path))
    assert str(info.value) == (
        "config validation failed: auth.api_keys or auth.api_key_users must contain at least "
        "one key")
    assert info.value.unknown == [
        "unknown key auth.api_key_user ignored (did you mean auth.api_key_users?)"]
    message = error_of(lambda: load(environ={}, cwd=str(tmp_path), strict=True))
    assert message == (
        f"config validation failed: unknown key in {tmp_path / 'config.json'}: "
        "auth.api_key_user (did you mean auth.api_key_users?)")


def test_strict_runs_the_same_checks_on_a_clean_file(tmp_path):
    tree = valid()
    assert load_tree(tmp_path, tree) == load(environ={}, cwd=str(tmp_path), strict=True)
    with_(tree, "server.listen_addr", "127.0.0.1:99999")
    write(tmp_path, json.dumps(tree), "config.json")
    for strict in (False, True):
        assert error_of(lambda: load(environ={}, cwd=str(tmp_path), strict=strict)) == (
            'config validation failed: server.listen_addr "127.0.0.1:99999": '
            'port "99999" is not a number from 1 to 65535')


def test_contract_examples_are_valid(tmp_path):
    text = """
server:
  listen_addr: ":8443"
  protocol: "https"
  external_url: "https://node1.internal:8443"
  cert_file: "/etc/callfs/tls.crt"
  key_file: "/etc/callfs/tls.key"
auth:
  api_key_users:
    alice: "alice-key-at-least-16-chars"
  internal_proxy_secret: "same-secret-on-every-node"
  single_use_link_secret: "same-link-secret-on-every-node"
backend:
  default_backend: "localfs"
  localfs_root_path: "/var/lib/callfs"
metadata_store:
  type: "postgres"
  dsn: "postgres://callfs:secret@db.internal:5432/callfs?sslmode=require"
dlm:
  type: "redis"
  redis_addr: "redis.internal:6379"
instance_discovery:
  instance_id: "node-1"
  peer_endpoints:
    node-2: "https://node2.internal:8443"
    node-3: "https://node3.internal:8443"
"""
    cfg = load_yaml(tmp_path, text).config
    assert cfg.instance_discovery.peer_endpoints["node-3"] == "https://node3.internal:8443"
    assert config.base_url(cfg.server) == "https://node1.internal:8443"


# --- §2.4 the embedded profile ----------------------------------------------------------


def secrets_file(tmp_path):
    return tmp_path / "callfs-data" / "secrets.yaml"


def test_embedded_profile_without_writing(tmp_path):
    loaded = load(environ={}, cwd=str(tmp_path))
    cfg = loaded.config
    assert (loaded.source, loaded.path, loaded.secrets_path) == ("embedded", None, None)
    assert loaded.secrets_created is False
    assert not (tmp_path / "callfs-data").exists()
    assert cfg.server.listen_addr == "127.0.0.1:8443"
    assert cfg.server.protocol == "http"
    assert cfg.server.external_url == "http://127.0.0.1:8443"
    assert cfg.backend.localfs_root_path == str(tmp_path / "callfs-data" / "files")
    assert cfg.metadata_store.type == "sqlite"
    assert cfg.metadata_store.sqlite_path == str(tmp_path / "callfs-data" / "metadata.sqlite3")
    assert cfg.dlm.type == "local"
    assert cfg.metrics.listen_addr == ""
    assert list(cfg.auth.api_key_users) == ["admin"]
    assert len(cfg.auth.api_key_users["admin"]) >= 43
    assert cfg.auth.internal_proxy_secret != cfg.auth.single_use_link_secret
    assert loaded.warnings == []
    assert loaded.data_dir == str(tmp_path / "callfs-data")


def test_embedded_secrets_created_once_and_reused(tmp_path):
    first = load(environ={}, cwd=str(tmp_path), create_secrets=True)
    path = secrets_file(tmp_path)
    assert first.secrets_created is True
    assert first.secrets_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["secrets.yaml"]
    second = load(environ={}, cwd=str(tmp_path), create_secrets=True)
    third = load(environ={}, cwd=str(tmp_path))
    assert second.secrets_created is False and third.secrets_path == str(path)
    for later in (second, third):
        assert later.config.auth == first.config.auth


def test_embedded_not_used_with_env_or_file(tmp_path):
    assert error_of(lambda: load(environ={"CALLFS_OTHER": "1"}, cwd=str(tmp_path))) == (
        "config validation failed: "
        "auth.api_keys or auth.api_key_users must contain at least one key"
    )
    write(tmp_path, "")
    assert error_of(lambda: load(environ={}, cwd=str(tmp_path))).startswith(
        "config validation failed: "
    )


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_embedded_refuses_readable_secrets(tmp_path, mode):
    load(environ={}, cwd=str(tmp_path), create_secrets=True)
    path = secrets_file(tmp_path)
    path.chmod(mode)
    message = error_of(lambda: load(environ={}, cwd=str(tmp_path), create_secrets=True))
    assert message == (
        f"secrets file {path} must not be accessible by group or others "
        f"(mode {mode:04o}); run: chmod 600 {path}"
    )


@pytest.mark.parametrize(
    "text", ["- a\n", "admin_api_key: x\n", "admin_api_key: [\n", "admin_api_key: ''\n"]
)
def test_embedded_refuses_malformed_secrets(tmp_path, text):
    path = secrets_file(tmp_path)
    path.parent.mkdir()
    path.write_text(text)
    path.chmod(0o600)
    message = error_of(lambda: load(environ={}, cwd=str(tmp_path)))
    assert message.startswith(f"failed to load secrets file {path}: ")


def test_embedded_uses_existing_secrets_file(tmp_path):
    path = secrets_file(tmp_path)
    path.parent.mkdir()
    path.write_text(
        "admin_api_key: admin-key-0123456789\n"
        "internal_proxy_secret: internal-0123456789\n"
        "single_use_link_secret: link-0123456789\n"
    )
    path.chmod(0o600)
    auth = load(environ={}, cwd=str(tmp_path), create_secrets=True).config.auth
    assert auth.api_key_users == {"admin": "admin-key-0123456789"}
    assert auth.internal_proxy_secret == "internal-0123456789"
    assert auth.single_use_link_secret == "link-0123456789"


# --- §7.2 DSN masking -------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn,shown",
    [
        ("", ""),
        ("postgres://callfs:callfs@localhost/callfs?sslmode=require", "postgres:/***require"),
        ("host=db", "***"),
        ("a" * 20, "***"),
        ("0123456789x" + "abcdefghij", "0123456789***defghij"),
        ("postgres://u:secret@db.internal:5432/callfs", "postgres:/***/callfs"),
    ],
)
def test_mask_dsn(dsn, shown):
    assert mask_dsn(dsn) == shown


# --- addresses: validate refuses what the server could not listen on -------------------


@pytest.mark.parametrize(
    "addr,reason",
    [
        ("127.0.0.1:99999", 'port "99999" is not a number from 1 to 65535'),
        (":0", 'port "0" is not a number from 1 to 65535'),
        ("localhost:http", 'port "http" is not a number from 1 to 65535'),
        ("127.0.0.1:", 'port "" is not a number from 1 to 65535'),
        ("8443", "want host:port, or :port for every interface"),
        ("::1:8443", "an IPv6 address needs brackets, as in [::1]:8443"),
    ],
)
def test_listen_addr_must_be_listenable(tmp_path, addr, reason):
    message = validation_error(tmp_path, with_(valid(), "server.listen_addr", addr))
    assert message == f'config validation failed: server.listen_addr "{addr}": {reason}'


@pytest.mark.parametrize("addr", [":8443", "127.0.0.1:1", "[::1]:65535", "localhost:8443"])
def test_listen_addr_forms_accepted(tmp_path, addr):
    assert load_tree(tmp_path, with_(valid(), "server.listen_addr", addr)).config


def test_other_addresses_checked_when_used(tmp_path):
    tree = with_(valid(), "metrics.listen_addr", "9090")
    assert validation_error(tmp_path, tree).startswith(
        'config validation failed: metrics.listen_addr "9090": '
    )
    with_(tree, "metrics.listen_addr", "")
    with_(tree, "server.quic_listen_addr", "x")
    assert load_tree(tmp_path, tree).config.server.quic_listen_addr == "x"  # QUIC is off


def test_reference_checks_come_first(tmp_path):
    tree = with_(valid(), "server.listen_addr", "127.0.0.1:99999")
    tree["auth"]["api_key_users"] = {}
    assert validation_error(tmp_path, tree) == (
        "config validation failed: auth.api_keys or auth.api_key_users must contain at least one key"
    )


def test_unavailable_types_pass_validation_but_are_named(tmp_path):
    cfg = load_tree(tmp_path, with_(valid(), "metadata_store.type", "redis")).config
    assert config.unavailable(cfg) == (
        "metadata_store.type redis is not available in this build; use sqlite or postgres"
    )
    assert config.unavailable(load_tree(tmp_path, valid()).config) is None


# --- the command line's --listen and --data -------------------------------------------


def test_flags_win_over_file_and_environment(tmp_path):
    tree = with_(valid(), "server.listen_addr", "127.0.0.1:1111")
    with_(tree, "backend.localfs_root_path", "/elsewhere")
    write(tmp_path, json.dumps(tree), "config.json")
    env = {"CALLFS_SERVER__LISTEN_ADDR": "127.0.0.1:2222"}
    assert load(environ=env, cwd=str(tmp_path)).config.server.listen_addr == "127.0.0.1:2222"
    flags = config.Overrides(listen="127.0.0.1:3333", data="store")
    loaded = load(environ=env, cwd=str(tmp_path), overrides=flags)
    cfg = loaded.config
    assert cfg.server.listen_addr == "127.0.0.1:3333"
    assert cfg.backend.localfs_root_path == str(tmp_path / "store" / "files")
    assert cfg.metadata_store.sqlite_path == str(tmp_path / "store" / "metadata.sqlite3")
    assert (loaded.source, loaded.data_dir) == ("file", str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_flags_keep_the_embedded_profile(tmp_path):
    flags = config.Overrides(listen="0.0.0.0:9000", data="/srv/callfs")
    loaded = load(environ={}, cwd=str(tmp_path), overrides=flags)
    cfg = loaded.config
    assert loaded.source == "embedded" and loaded.data_dir == "/srv/callfs"
    assert cfg.server.listen_addr == "0.0.0.0:9000"
    assert cfg.server.external_url == "http://127.0.0.1:9000"
    assert cfg.backend.localfs_root_path == "/srv/callfs/files"
    assert cfg.metadata_store.sqlite_path == "/srv/callfs/metadata.sqlite3"
    ipv6 = load(environ={}, cwd=str(tmp_path), overrides=config.Overrides(listen="[::1]:9000"))
    assert ipv6.config.server.external_url == "http://[::1]:9000"


def test_a_bad_listen_flag_fails_like_the_key(tmp_path):
    flags = config.Overrides(listen="127.0.0.1:99999")
    message = error_of(lambda: load(environ={}, cwd=str(tmp_path), overrides=flags))
    assert message == (
        'config validation failed: server.listen_addr "127.0.0.1:99999": '
        'port "99999" is not a number from 1 to 65535'
    )


# --- secrets are stored only when the server asks ---------------------------------------


def test_keep_secrets_stores_what_was_loaded(tmp_path):
    loaded = load(environ={}, cwd=str(tmp_path))
    assert loaded.secrets_path is None and not (tmp_path / "callfs-data").exists()
    kept = config.keep_secrets(loaded)
    assert kept.secrets_created is True and kept.secrets_path == str(secrets_file(tmp_path))
    assert kept.config.auth == loaded.config.auth
    assert load(environ={}, cwd=str(tmp_path)).config.auth == kept.config.auth
    assert config.keep_secrets(kept) is kept


def test_keep_secrets_adopts_secrets_stored_meanwhile(tmp_path):
    early = load(environ={}, cwd=str(tmp_path))
    stored = load(environ={}, cwd=str(tmp_path), create_secrets=True)
    kept = config.keep_secrets(early)
    assert kept.secrets_created is False
    assert kept.config.auth.api_key_users == stored.config.auth.api_key_users


@pytest.mark.parametrize(
    "dsn,shown",
    [
        ("postgres://u:hunter2@db:5432/x?sslmode=require", "postgres://u:***@db:5432/x?sslmode=require"),
        ("postgres://u:p@ss@db/x", "postgres://u:***@db/x"),
        ("postgresql://postgres@127.0.0.1:5432/db", "postgresql://postgres@127.0.0.1:5432/db"),
        ("postgres://db/x?password=abc&sslmode=require", "postgres://db/x?password=***&sslmode=require"),
        ("host=db password=secret user=u", "host=db password=*** user=u"),
        ("host=db password='se cret' user=u", "host=db password=*** user=u"),
    ],
)
def test_redact_dsn_hides_only_the_password(dsn, shown):
    assert config.redact_dsn(dsn) == shown
