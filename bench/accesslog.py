"""What a server's access log received during one timed run: its request lines, and the lines
it says it dropped.

Both servers log as they do by default, to a file in their work directory, and a row counts
only if the log holds about as many request lines as wrk saw answers: a server that logs nothing
(or far less than it serves) must not pass for one that logs. The file is opened for appending
by the server, so the harness empties it around each timed run, as logrotate's copytruncate
does: the run's lines are counted alone, and their write-back never falls into another run.
"""
import dataclasses
import json
import os
import time

# CallFS's access line and its writer's report of lines its full buffer dropped
# (callfs/_native/logsink.pyx, callfs/observability/logging.py), in the JSON format.
CALLFS_ACCESS = b'"logger":"callfs.access"'
CALLFS_DROPPED = b'"event":"log lines dropped"'

LOGGED_SHARE = 0.9  # written + dropped lines, at least this share of the requests wrk counted
# How long a file must stay the same size for its writer to have caught up: nginx writes each
# line as its request ends; CallFS's writer thread writes what is pending every 50 ms.
NGINX_QUIET = 0.05
CALLFS_QUIET = 0.3
SETTLE_SECONDS = 15.0
_POLL = 0.02
_CHUNK = 8 << 20


@dataclasses.dataclass
class Tally:
    lines: int  # request lines written
    dropped: int  # lines the server reported dropped
    bytes: int  # size of what was written during the run

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class AccessLog:
    """A server's access log file. `marker`: the bytes that make a line a request line (None:
    every line is one, as in nginx's access.log); `dropped`: the bytes of a line reporting
    dropped lines, a JSON object with a `count`; `quiet`: see NGINX_QUIET."""

    def __init__(self, path: str, marker: bytes | None = None, dropped: bytes | None = None,
                 quiet: float = NGINX_QUIET):
        self.path = path
        self.marker = marker
        self.dropped = dropped
        self.quiet = quiet

    def _size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def settle(self) -> None:
        """Until the file has stopped growing: the lines of requests already answered are out."""
        deadline = time.monotonic() + SETTLE_SECONDS
        size, still_since = self._size(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(_POLL)
            now = self._size()
            if now != size:
                size, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= self.quiet:
                return

    def begin(self) -> None:
        """Empty the file once the earlier lines (a check, the warm-up) are written."""
        self.settle()
        self.empty()

    def empty(self) -> None:
        if os.path.exists(self.path):
            os.truncate(self.path, 0)

    def count(self) -> Tally:
        """What was written since `begin`, once the writer has caught up."""
        self.settle()
        lines = dropped = size = 0
        if not os.path.exists(self.path):
            return Tally(0, 0, 0)
        with open(self.path, "rb") as f:
            rest = b""
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                block = rest + chunk
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
                found = self._count(block)
                lines, dropped = lines + found[0], dropped + found[1]
            found = self._count(rest)
        return Tally(lines + found[0], dropped + found[1], size)

    def _count(self, block: bytes) -> tuple[int, int]:
        if not block:
            return 0, 0
        if self.marker is None:
            lines = block.count(b"\n") + (not block.endswith(b"\n"))
        else:
            lines = block.count(self.marker)
        dropped = 0
        if self.dropped is not None and self.dropped in block:
            for line in block.splitlines():
                if self.dropped in line:
                    try:
                        dropped += int(json.loads(line).get("count", 0))
                    except (ValueError, TypeError, AttributeError):
                        pass
        return lines, dropped


def problem(logs: bool, requests: int, tally: Tally) -> str | None:
    """Why the row does not measure what it claims, if it does not: with the access log on,
    about a line per request (counting the ones reported dropped); with it off, none."""
    if logs and tally.lines + tally.dropped < LOGGED_SHARE * requests:
        return (f"its access log holds {tally.lines:,} request lines ({tally.dropped:,} "
                f"reported dropped) for {requests:,} requests answered, under "
                f"{LOGGED_SHARE:.0%}: the run did not measure a server that logs each request")
    if not logs and tally.lines:
        return f"{tally.lines:,} access lines written with the access log off"
    return None
