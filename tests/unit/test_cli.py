"""The `callfs` command line as a user runs it (CONFIG.md §7), in a subprocess."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import callfs

REPO = Path(__file__).resolve().parents[2]

VALID_YAML = """\
server:
  listen_addr: ":9443"
  protocol: "http"
auth:
  api_key_users:
    alice: "alice-key-at-least-16-chars"
  internal_proxy_secret: "internal-secret-0123456789"
  single_use_link_secret: "link-secret-0123456789"
backend:
  localfs_root_path: "./data"
metadata_store:
  type: "sqlite"
dlm:
  type: "local"
  redis_addr: "redis.internal:6379"
instance_discovery:
  instance_id: "node-7"
"""


SERVER_USAGE = (
    "callfs server [-c PATH] [--strict] [--workers N] [--listen HOST:PORT] [--data DIR]")
VALIDATE_USAGE = "callfs config validate [-c PATH] [--strict] [--listen HOST:PORT] [--data DIR]"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def callfs_cli(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "callfs", *args],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(tmp_path, text=VALID_YAML, name="config.yaml") -> str:
    (tmp_path / name).write_text(text)
    return name


# --- help, version, usage errors --------------------------------------------------------


def test_help(tmp_path):
    for args in (["--help"], ["-h"], ["help"]):
        result = callfs_cli(tmp_path, *args)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
        for command in ("server", "config", "cluster", "help"):
            assert f"  {command} " in result.stdout


@pytest.mark.parametrize(
    "args,usage",
    [
        (["server", "--help"], SERVER_USAGE),
        (["config", "validate", "-h"], VALIDATE_USAGE),
        (["config", "--help"], "callfs config [-c PATH] [--strict] validate"),
        (["cluster", "join", "--help"], "callfs cluster join --leader URL [flags]"),
        (["help", "server"], SERVER_USAGE),
        (["help", "config", "validate"], VALIDATE_USAGE),
        (["cluster"], "callfs cluster join [flags]"),
    ],
)
def test_command_help(tmp_path, args, usage):
    result = callfs_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert f"Usage:\n  {usage}\n" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["server", "--help"], ["config", "validate", "--help"],
                                  ["config", "--help"]])
def test_help_describes_strict(tmp_path, args):
    result = callfs_cli(tmp_path, *args)
    line = next(line for line in result.stdout.splitlines() if " --strict " in line)
    assert "refuse unknown configuration keys" in line
    assert "default: ignore each with a warning" in line


def test_version(tmp_path):
    result = callfs_cli(tmp_path, "--version")
    assert (result.returncode, result.stdout) == (0, f"callfs {callfs.__version__}\n")


@pytest.mark.parametrize(
    "args,message",
    [
        (["serve"], 'unknown command "serve" for "callfs"'),
        (["config", "check"], 'unknown command "check" for "callfs config"'),
        (["server", "--bogus"], "unknown flag: --bogus"),
        (["server", "-x"], "unknown shorthand flag: 'x' in -x"),
        (["--config", "x"], "unknown flag: --config"),
        (["-c", "x"], "unknown shorthand flag: 'c' in -c"),
        (["server", "--config"], "flag needs an argument: --config"),
        (["server", "--workers", "0"], 'invalid argument "0" for "--workers": must be at least 1'),
        (["server", "--workers=two"], 'invalid argument "two" for "--workers": must be at least 1'),
        (["server", "extra"], 'unexpected argument "extra" for "callfs server"'),
        (["server", "--listen"], "flag needs an argument: --listen"),
        (["server", "--data="], 'invalid argument "" for "--data": must not be empty'),
        (
            ["config", "validate", "--listen="],
            'invalid argument "" for "--listen": must not be empty',
        ),
        (["help", "serve"], 'unknown help topic "serve"'),
        (["--strict"], "unknown flag: --strict"),
        (["server", "--strict=yes"], "flag --strict does not take a value"),
        (["config", "validate", "--strict=1"], "flag --strict does not take a value"),
        (["cluster", "join"], 'required flag "--leader" not set'),
    ],
)
def test_usage_errors(tmp_path, args, message):
    result = callfs_cli(tmp_path, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"Error: {message}"
    assert lines[1].startswith("Usage: callfs")


# --- config validate --------------------------------------------------------------------


def test_validate_success(tmp_path):
    write_config(tmp_path)
    result = callfs_cli(tmp_path, "config", "validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Validating configuration...",
        "Configuration is valid",
        "Instance ID: node-7",
        "Listen Address: :9443",
        "Metadata Store DSN: postgres:/***require",
        "Redis Address: redis.internal:6379",
        "Local FS Root: ./data",
    ]
    assert result.stderr == ""


def test_validate_shows_s3_and_masked_dsn(tmp_path):
    text = VALID_YAML.replace(
        'localfs_root_path: "./data"',
        'localfs_root_path: "./data"\n  s3_bucket_name: "files"\n  s3_region: "eu-west-3"',
    ).replace(
        'type: "sqlite"',
        'type: "postgres"\n  dsn: "postgres://callfs:hunter2@db.internal:5432/callfs"',
    )
    write_config(tmp_path, text)
    result = callfs_cli(tmp_path, "config", "validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[4:] == [
        "Metadata Store DSN: postgres:/***/callfs",
        "Redis Address: redis.internal:6379",
        "Local FS Root: ./data",
        "S3 Bucket: files",
        "S3 Region: eu-west-3",
    ]
    assert "hunter2" not in result.stdout


def test_validate_failure(tmp_path):
    write_config(tmp_path, VALID_YAML.replace('instance_id: "node-7"', 'instance_id: ""'))
    result = callfs_cli(tmp_path, "config", "validate")
    message = "config validation failed: instance_discovery.instance_id is required"
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "Validating configuration...",
        f"Configuration validation failed: {message}",
    ]
    assert result.stderr.splitlines()[0] == f"Error: {message}"


def test_validate_missing_file(tmp_path):
    result = callfs_cli(tmp_path, "config", "validate", "-c", "nope.yaml")
    message = "specified config file nope.yaml not found: no such file or directory"
    assert result.returncode == 1
    assert result.stdout.splitlines()[1] == f"Configuration validation failed: {message}"
    assert result.stderr.splitlines()[0] == f"Error: {message}"


def test_validate_bad_extension(tmp_path):
    name = write_config(tmp_path, VALID_YAML, "callfs.toml")
    result = callfs_cli(tmp_path, "config", "validate", "--config", name)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "Error: failed to load config file callfs.toml: "
        "unsupported file type (the name must end in .yaml, .yml or .json)"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["config", "-c", "other.yml", "validate"],
        ["config", "--config=other.yml", "validate"],
        ["config", "validate", "-cother.yml"],
        ["config", "validate", "--config", "other.yml"],
    ],
)
def test_validate_config_flag_positions(tmp_path, args):
    write_config(tmp_path, VALID_YAML.replace("node-7", "from-other"), "other.yml")
    write_config(tmp_path, "server: [broken\n")
    result = callfs_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Instance ID: from-other" in result.stdout.splitlines()


ENV_CONFIG = {
    "CALLFS_SERVER__PROTOCOL": "http",
    "CALLFS_METADATA_STORE__TYPE": "sqlite",
    "CALLFS_DLM__TYPE": "local",
    "CALLFS_AUTH__API_KEY_USERS__ALICE": "alice-key-at-least-16-chars",
    "CALLFS_AUTH__INTERNAL_PROXY_SECRET": "internal-secret-0123456789",
    "CALLFS_AUTH__SINGLE_USE_LINK_SECRET": "link-secret-0123456789",
    "CALLFS_INSTANCE_DISCOVERY__INSTANCE_ID": "env-node",
}


def test_validate_from_environment(tmp_path):
    result = callfs_cli(tmp_path, "config", "validate", **ENV_CONFIG, CALLFS_VENV="/opt/x")
    assert result.returncode == 0, result.stderr
    assert "Instance ID: env-node" in result.stdout.splitlines()
    assert result.stderr == "Warning: CALLFS_VENV names no configuration key; ignored\n"


UNKNOWN_CASES = [
    (
        VALID_YAML.replace("listen_addr:", "listen_adr:"),
        {},
        "unknown key server.listen_adr ignored (did you mean server.listen_addr?)",
        "unknown key in config.yaml: server.listen_adr (did you mean server.listen_addr?)",
    ),
    (
        VALID_YAML.replace('type: "local"', 'tpye: "local"'),
        {},
        "unknown key dlm.tpye ignored (did you mean dlm.type?)",
        "unknown key in config.yaml: dlm.tpye (did you mean dlm.type?)",
    ),
    (
        VALID_YAML.replace('protocol: "http"', 'Protocol: "http"'),
        {},
        "unknown key server.Protocol ignored (did you mean server.protocol?)",
        "unknown key in config.yaml: server.Protocol (did you mean server.protocol?)",
    ),
    (
        VALID_YAML,
        {"CALLFS_SERVER_LISTEN_ADDR": ":1"},
        "unknown environment variable CALLFS_SERVER_LISTEN_ADDR ignored "
        "(did you mean CALLFS_SERVER__LISTEN_ADDR?)",
        "unknown environment variable: CALLFS_SERVER_LISTEN_ADDR "
        "(did you mean CALLFS_SERVER__LISTEN_ADDR?)",
    ),
]


@pytest.mark.parametrize("text,env,warning,_", UNKNOWN_CASES)
def test_validate_warns_about_unknown_names(tmp_path, text, env, warning, _):
    """CONFIG.md §2.3 and §3: an unknown name is ignored, never a failure; CallFS names it
    and the key meant."""
    write_config(tmp_path, text)
    result = callfs_cli(tmp_path, "config", "validate", "-c", "config.yaml", **env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"Warning: {warning}\n"
    assert "Configuration is valid" in result.stdout.splitlines()


@pytest.mark.parametrize("text,env,_,message", UNKNOWN_CASES)
def test_strict_refuses_unknown_names_in_validate_and_server(tmp_path, text, env, _, message):
    """--strict: the same findings are errors, the same words from both commands, before the
    server creates anything."""
    write_config(tmp_path, text)
    full = f"config validation failed: {message}"
    result = callfs_cli(tmp_path, "config", "validate", "--strict", "-c", "config.yaml", **env)
    assert result.returncode == 1
    assert result.stdout.splitlines()[1] == f"Configuration validation failed: {full}"
    assert result.stderr.splitlines()[0] == f"Error: {full}"
    result = callfs_cli(tmp_path, "server", "-c", "config.yaml", "--strict", **env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == f"Error: {full}"
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


@pytest.mark.parametrize("strict", [[], ["--strict"]])
def test_validate_and_server_refuse_alike(tmp_path, strict):
    """One validation for both commands, with or without --strict: what validate refuses,
    the server refuses, with the same words, before creating anything."""
    write_config(tmp_path, VALID_YAML.replace('":9443"', '"127.0.0.1:99999"'))
    full = ('config validation failed: server.listen_addr "127.0.0.1:99999": '
            'port "99999" is not a number from 1 to 65535')
    result = callfs_cli(tmp_path, "config", "validate", "-c", "config.yaml", *strict)
    assert result.returncode == 1
    assert result.stdout.splitlines()[1] == f"Configuration validation failed: {full}"
    assert result.stderr.splitlines()[0] == f"Error: {full}"
    result = callfs_cli(tmp_path, "server", "-c", "config.yaml", *strict)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == f"Error: {full}"
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_warnings_come_before_the_error_they_may_explain(tmp_path):
    """A misspelt api_key_users leaves no key: the error follows the warning that explains it,
    from validate and from the server alike."""
    write_config(tmp_path, VALID_YAML.replace("api_key_users:", "api_key_user:"))
    warning = ("Warning: unknown key auth.api_key_user ignored "
               "(did you mean auth.api_key_users?)")
    error = ("Error: config validation failed: auth.api_keys or auth.api_key_users must "
             "contain at least one key")
    for args in (["config", "validate"], ["server"]):
        result = callfs_cli(tmp_path, *args)
        assert result.returncode == 1
        assert result.stderr.splitlines()[:2] == [warning, error]
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


@pytest.mark.parametrize(
    "args",
    [
        ["config", "--strict", "validate"],
        ["config", "-c", "config.yaml", "--strict", "validate"],
        ["config", "validate", "--strict"],
        ["config", "--strict", "validate", "--config=config.yaml"],
    ],
)
def test_validate_strict_flag_positions(tmp_path, args):
    write_config(tmp_path, VALID_YAML.replace("listen_addr:", "listen_adr:"))
    result = callfs_cli(tmp_path, *args)
    assert result.returncode == 1
    assert "unknown key in config.yaml: server.listen_adr" in result.stderr.replace(
        str(tmp_path / "config.yaml"), "config.yaml")
    write_config(tmp_path)
    result = callfs_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_validate_with_flags(tmp_path):
    write_config(tmp_path)
    result = callfs_cli(tmp_path, "config", "validate", "--listen", "127.0.0.1:7000",
                        "--data", "store")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Listen Address: 127.0.0.1:7000" in lines
    assert f"Local FS Root: {tmp_path / 'store' / 'files'}" in lines
    assert not (tmp_path / "store").exists()
    result = callfs_cli(tmp_path, "config", "validate", "--listen", "127.0.0.1:99999")
    assert result.returncode == 1
    assert "port \"99999\" is not a number from 1 to 65535" in result.stderr


def test_validate_names_what_this_build_lacks(tmp_path):
    write_config(tmp_path, VALID_YAML.replace('type: "sqlite"', 'type: "raft"'))
    result = callfs_cli(tmp_path, "config", "validate")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "Warning: metadata_store.type raft is not available in this build; use sqlite or "
        "postgres; 'callfs server' will refuse to start\n"
    )


def test_validate_embedded_profile_writes_nothing(tmp_path):
    result = callfs_cli(tmp_path, "config", "validate")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    data = tmp_path / "callfs-data"
    assert lines[:7] == [
        "Validating configuration...",
        "Configuration is valid",
        "Instance ID: callfs-instance-1",
        "Listen Address: 127.0.0.1:8443",
        "Metadata Store DSN: postgres:/***require",
        "Redis Address: localhost:6379",
        f"Local FS Root: {data / 'files'}",
    ]
    assert f"Metadata Store: sqlite {data / 'metadata.sqlite3'}" in lines
    assert "API Users: admin" in lines
    assert not data.exists()


def test_server_with_invalid_config_fails(tmp_path):
    write_config(tmp_path, VALID_YAML.replace('protocol: "http"', 'protocol: "gopher"'))
    for args in ([], ["server"]):
        result = callfs_cli(tmp_path, *args)
        assert result.returncode == 1
        assert result.stderr.splitlines()[0] == (
            "Error: config validation failed: server.protocol must be one of: http, https, auto"
        )


# --- cluster join -----------------------------------------------------------------------


class FakeLeader(BaseHTTPRequestHandler):
    """A leader answering the join endpoint as API.md §14.2 describes."""

    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLeader.requests.append((self.path, self.headers["Authorization"], body))
        if self.headers["Authorization"] != "Bearer internal-secret-0123456789":
            self._answer(401, {"status": "error", "error": "unauthorized"})
        elif body["node_id"] == "broken":
            self._answer(500, None)
        else:
            self._answer(200, {"status": "joined", "leader_id": "node-1"})

    def _answer(self, status, payload):
        data = b"oops" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def leader():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLeader)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeLeader.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_join_with_flags(tmp_path, leader):
    result = callfs_cli(
        tmp_path,
        "cluster",
        "join",
        "--leader",
        leader,
        "--node-id",
        "node-2",
        "--raft-addr",
        "node2:7000",
        "--api-endpoint",
        "http://node2:8443",
        "--internal-secret",
        "internal-secret-0123456789",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Join successful: node=node-2 leader=node-1 status=joined\n"
    assert FakeLeader.requests == [
        (
            "/v1/internal/raft/join",
            "Bearer internal-secret-0123456789",
            {"node_id": "node-2", "raft_addr": "node2:7000", "api_endpoint": "http://node2:8443"},
        )
    ]


def test_join_fills_in_from_config(tmp_path, leader):
    text = VALID_YAML.replace(
        'protocol: "http"', 'protocol: "http"\n  external_url: "http://node9:8443"'
    )
    write_config(tmp_path, text + 'raft:\n  node_id: "node-9"\n  bind_addr: "10.0.0.9:7000"\n')
    result = callfs_cli(tmp_path, "cluster", "join", "--leader", leader + "/")
    assert result.returncode == 0, result.stderr
    assert FakeLeader.requests[0][2] == {
        "node_id": "node-9",
        "raft_addr": "10.0.0.9:7000",
        "api_endpoint": "http://node9:8443",
    }


def test_join_refused(tmp_path, leader):
    base = ["cluster", "join", "--leader", leader, "--node-id", "n", "--raft-addr", "a:1"]
    base += ["--api-endpoint", "http://n"]
    result = callfs_cli(tmp_path, *base, "--internal-secret", "wrong-secret")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "Error: join failed: unauthorized"
    base[5] = "broken"
    result = callfs_cli(tmp_path, *base, "--internal-secret", "internal-secret-0123456789")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "Error: join failed with status 500"


def test_join_unreachable_leader(tmp_path):
    args = ["--node-id", "n", "--raft-addr", "a:1", "--api-endpoint", "x", "--internal-secret", "s"]
    result = callfs_cli(tmp_path, "cluster", "join", "--leader", "http://127.0.0.1:9", *args)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: join failed: ")


def test_join_without_usable_config_needs_flags(tmp_path):
    write_config(tmp_path, "server: [broken\n")
    result = callfs_cli(tmp_path, "cluster", "join", "--leader", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "Error: --node-id is required (or set raft.node_id in the configuration)"
    )


# --- the start-up summary -----------------------------------------------------------------


def test_start_summary_says_what_the_server_does(tmp_path):
    from callfs import cli, config

    text = VALID_YAML.replace('protocol: "http"', 'protocol: "https"\n  cert_file: "/etc/t.crt"')
    text = text.replace('type: "sqlite"', 'type: "postgres"\n  dsn: "postgres://u:hunter2@db/x"')
    text = text.replace('type: "local"', 'type: "redis"')
    write_config(tmp_path, text)
    loaded = config.load(environ={}, cwd=str(tmp_path))
    lines = cli.start_summary(loaded, 4, shared=True)
    assert lines == [
        f"CallFS is starting with configuration file {tmp_path / 'config.yaml'}.",
        "  Address:        https://*:9443 (every interface)",
        "  TLS:            on (/etc/t.crt)",
        "  Metadata store: postgres postgres://u:***@db/x",
        "  Lock manager:   redis redis.internal:6379",
        "  Data directory: ./data (shared with this instance's other processes)",
        "  Workers:        4",
    ]
    assert "hunter2" not in "\n".join(lines)
    flags = config.Overrides(listen="[::1]:8000", data="d")
    loaded = config.load(environ={}, cwd=str(tmp_path / "none"), overrides=flags)
    lines = cli.start_summary(config.keep_secrets(loaded), 1, shared=False)
    assert lines[1] == "  Address:        http://[::1]:8000"
    assert lines[5] == f"  Data directory: {tmp_path / 'none' / 'd'} (this server only)"
    assert lines[7].startswith("  Secrets file:   ") and lines[7].endswith("(created)")
    assert lines[-1].startswith('  curl -H "Authorization: Bearer ')
    assert lines[-1].endswith(" http://[::1]:8000/v1/directories/")
