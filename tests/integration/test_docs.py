"""Every shell example in docs/ runs against a real server, and says what it gets.

How a page's examples are run (docs/README.md, "Examples that run", says the same for writers):

- Each page gets a server of its own, started empty, whose keys are the docs' example keys
  (`alice-key-at-least-16-chars` for alice, likewise `bob-…` and `carol-…`, the embedded
  profile's banner key as a positional key), with alice and bob in the group `staff`, and
  whose instance is `node-1`. The examples' address `127.0.0.1:8443` is rewritten to
  that server's address; nothing else in the text is changed.
- The page's ```sh, ```bash and ```console blocks run in order, in one bash process (a variable
  set in one block is there in the next), in a scratch directory that is also $HOME, with
  `callfs` on the PATH. `curl` is curl with `-sS` and its status reported beside its output.
- A page holding `<!-- server: s3 -->` gets a server whose new entries go to an S3 bucket
  (moto's server on loopback).
- `<!-- not run: reason -->` before a block skips it (the test counts those); an HTML comment
  `<!-- setup` ... `-->` holds commands a reader need not see that run in their place, e.g. to
  create the files a later example reads.
- Every command must exit 0. A comment that starts with a status code (`# 201`, `# 204 or 412`,
  `# 400 {"code":…}`, `# 400 INVALID_PATH`), at the end of a command or on the lines just after
  it, is checked against the command's last HTTP status (and body: JSON equal, or the error's
  code); one that starts with `{` or `[` is the JSON the command prints. Other comment lines
  just after a command, when a blank line or the block's end follows them, are text the
  command's output must contain. Any other comment is prose. In a ```console block, `$ ` lines
  are commands and the lines after them text the output must contain.
"""
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import KEYS, POSITIONAL_KEY, launch, s3_sections

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE_ADDRESS = "127.0.0.1:8443"
ALICE_KEY = "alice-key-at-least-16-chars"
BOB_KEY = "bob-key-at-least-16-chars"
CAROL_KEY = "carol-key-at-least-16-chars"
GROUPS = {"staff": ["alice", "bob"]}
BANNER_KEY = "cru7XecNI24w0WWulqmfDcAMF_EpgdZrtM5iqUbydxs"  # docs/installation.md's banner
PAGE_TIMEOUT = 180

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(.+?)\s*-->\s*$")
STATUS_LED = re.compile(r"^(\d{3})\b[:,]?\s*(.*)$", re.S)
ALTERNATIVES = re.compile(r",?\s+or\s+|;\s+")
ERROR_CODE = re.compile(r"^([A-Z][A-Z_]+)\b")
RUN_LANGUAGES = ("sh", "bash", "console")


@dataclass
class Step:
    command: str
    line: int
    checks: list = field(default_factory=list)  # ("status", text) | ("json", text) | ("text", text)


@dataclass
class Page:
    steps: list
    skipped: list  # (line, reason)


def _split_comment(line: str) -> tuple[str, str | None]:
    """A command line and its trailing comment (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                continue
        elif char in "'\"":
            quote = char
        elif char == "#" and i > 0 and line[i - 1] in " \t":
            return line[:i].rstrip(), line[i + 1:].strip()
    return line, None


def _checks_of(text: str, trailing: bool) -> list:
    if STATUS_LED.match(text):
        return [("status", text)]
    if text[:1] in "{[":
        return [("json", text)]
    return [] if trailing else [("text", text)]


def _shell_steps(code: str, first_line: int) -> list[Step]:
    lines = code.splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.lstrip().startswith("#"):
            i += 1
            continue
        start = i
        while lines[i].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
        body, trailing = _split_comment(lines[i])
        step = Step("\n".join(lines[start:i] + [body]), first_line + start)
        if trailing:
            step.checks += _checks_of(trailing, True)
        i += 1
        # Comment lines right after the command: its expected output, unless they lead into
        # the next command (then they are prose about it).
        group = []
        while i < len(lines) and lines[i].lstrip().startswith("#"):
            group.append(lines[i].lstrip()[1:].strip())
            i += 1
        ends = i >= len(lines) or not lines[i].strip()
        for text in group:
            if STATUS_LED.match(text) or text[:1] in "{[" or ends:
                step.checks += _checks_of(text, False)
        steps.append(step)
    return steps


def _console_steps(code: str, first_line: int) -> list[Step]:
    steps: list[Step] = []
    for offset, line in enumerate(code.splitlines()):
        if line.startswith("$ "):
            steps.append(Step(line[2:], first_line + offset))
        elif line.strip() and steps:
            steps[-1].checks.append(("text", line.strip()))
    return steps


def parse(text: str) -> Page:
    lines = text.splitlines()
    steps, skipped = [], []
    reason = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = NOT_RUN.match(line)
        if marker:
            reason = marker.group(1)
            i += 1
            continue
        if line.strip().startswith("<!-- setup"):
            end = i
            while "-->" not in lines[end]:
                end += 1
            body = "\n".join(lines[i + 1:end])
            steps += _shell_steps(body, i + 2)
            i = end + 1
            continue
        fence = FENCE.match(line)
        if fence:
            indent, language = fence.groups()
            end = i + 1
            while not (lines[end].startswith(indent + "```") and lines[end].strip() == "```"):
                end += 1
            if language in RUN_LANGUAGES:
                body = "\n".join(item[len(indent):] for item in lines[i + 1:end])
                if reason is not None:
                    skipped.append((i + 1, reason))
                elif language == "console":
                    steps += _console_steps(body, i + 2)
                else:
                    steps += _shell_steps(body, i + 2)
            reason = None
            i = end + 1
            continue
        if line.strip():
            reason = None  # a marker belongs to the block right after it
        i += 1
    return Page(steps, skipped)


PRELUDE = r"""
curl() { command curl -sS -w '%{stderr}\n@@status %{http_code}\n' "$@"; }
"""


def script_of(page: Page, address: str) -> str:
    parts = [PRELUDE]
    for number, step in enumerate(page.steps):
        parts.append(f"printf '\\n@@step {number}\\n'; printf '\\n@@step {number}\\n' >&2")
        parts.append(step.command.replace(EXAMPLE_ADDRESS, address))
        parts.append(f"printf '\\n@@rc {number} %d\\n' \"$?\" >&2")
    return "\n".join(parts) + "\n"


def _by_step(output: str) -> dict[int, str]:
    found = {}
    pieces = re.split(r"\n@@step (\d+)\n", output)
    for number, chunk in zip(pieces[1::2], pieces[2::2]):
        found[int(number)] = chunk
    return found


def _json_prefix(text: str):
    return json.JSONDecoder().raw_decode(text)[0]


def _status_matches(expected: str, status: int | None, stdout: str) -> bool:
    for alternative in ALTERNATIVES.split(expected):
        match = STATUS_LED.match(alternative.strip())
        if match is None or status != int(match.group(1)):
            continue
        rest = match.group(2).strip()
        try:
            if rest.startswith("{"):
                if _json_prefix(rest) != json.loads(stdout):
                    continue
            elif ERROR_CODE.match(rest):
                if json.loads(stdout).get("code") != ERROR_CODE.match(rest).group(1):
                    continue
        except ValueError:
            continue
        return True
    return False


def problems_of(page: Page, stdout: str, stderr: str) -> list[str]:
    outs, errs = _by_step(stdout), _by_step(stderr)
    found = []
    for number, step in enumerate(page.steps):
        where = f"line {step.line}: {step.command.splitlines()[0]}"
        err = errs.get(number)
        if err is None:
            found.append(f"{where}: did not run")
            continue
        rc = re.search(r"\n@@rc \d+ (\d+)\n", err)
        statuses = [int(s) for s in re.findall(r"@@status (\d{3})", err)]
        status = statuses[-1] if statuses else None
        out = outs.get(number, "").strip()
        shown = re.sub(r"\n?@@(status|rc) .*", "", err).strip()
        if rc is None or rc.group(1) != "0":
            found.append(f"{where}: exit status {rc.group(1) if rc else '?'}: {shown[-300:]}")
            continue
        for kind, text in step.checks:
            if kind == "status" and not _status_matches(text, status, out):
                found.append(f"{where}: expected {text!r}, got {status} {out[:300]!r}")
            elif kind == "json":
                try:
                    ok = _json_prefix(text) == json.loads(out)
                except ValueError:
                    ok = False
                if not ok:
                    found.append(f"{where}: expected {text!r}, got {out[:300]!r}")
            elif kind == "text" and text not in out:
                found.append(f"{where}: expected output containing {text!r}, got {out[:300]!r}")
    return found


PAGES = sorted(path.name for path in DOCS.glob("*.md"))


def test_every_page_is_found_and_parsed():
    assert "rename-move-copy.md" in PAGES and "api-files.md" in PAGES
    total = sum(len(parse((DOCS / name).read_text()).steps) for name in PAGES)
    assert total > 50


S3_PAGE = "<!-- server: s3 -->"  # the page's server keeps new entries in an S3 bucket


@pytest.mark.parametrize("name", PAGES)
def test_the_shell_examples_of_a_page_do_what_it_shows(tmp_path, name, request):
    text = (DOCS / name).read_text()
    page = parse(text)
    if not page.steps:
        pytest.skip(f"no shell examples ({len(page.skipped)} not run)")
    scratch = tmp_path / "home"
    scratch.mkdir()
    backend = {"localfs_root_path": str(scratch / "callfs-data" / "files")}
    if S3_PAGE in text:
        backend.update(s3_sections(request.getfixturevalue("moto"))["backend"])
    server = launch(tmp_path / "server",
                    auth={"api_keys": [POSITIONAL_KEY, BANNER_KEY],
                          "api_key_users": dict(KEYS, alice=ALICE_KEY, bob=BOB_KEY,
                                                carol=CAROL_KEY),
                          "groups": GROUPS},
                    backend=backend,
                    metadata_store={"type": "sqlite",
                                    "sqlite_path": str(scratch / "callfs-data" /
                                                       "metadata.sqlite3")},
                    instance_discovery={"instance_id": "node-1"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFS_")}
    env.update(HOME=str(scratch), LC_ALL="C.UTF-8",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    try:
        result = subprocess.run(["bash", "-c", script_of(page, f"127.0.0.1:{server.port}")],
                                cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace",
                                timeout=PAGE_TIMEOUT)
    finally:
        assert server.stop() == 0, server.log()
    problems = problems_of(page, result.stdout, result.stderr)
    print(f"{name}: {len(page.steps)} commands run, {len(page.skipped)} blocks not run")
    assert not problems, "\n".join([f"{name}:"] + problems)
