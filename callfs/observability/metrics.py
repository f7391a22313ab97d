"""Prometheus metrics (API.md §15.2), exact across the worker processes of an instance.

Every family is declared here with the values each of its labels can take, so each series is a
fixed cell of one shared table (callfs/_native/tally.pyx) that the master maps before it forks:
a process adds to its own row, a scrape through any worker sums them all. Label values are
bounded by construction: a request is counted under its route template, never its path.

`Metrics` is what the rest of the server is handed: named methods that add to the right cells.
Layers below the HTTP one see it through the small protocols they declare (core/observer.py,
metadata/measured.py, locks/measured.py). `render` writes the text exposition format.
"""
import bisect
import math

from callfs._native.tally import Tally
from callfs.domain.observer import Silent  # noqa: F401 (the observer of nobody, re-exported)

# Request-duration buckets (API.md §15.2), used by every histogram here.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Every method the HTTP parser passes on (llhttp's), then a catch-all that stays empty.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
           "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND",
           "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH",
           "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
           "SOURCE", "QUERY", "OTHER")
# Route templates (API.md §15.2); `unmatched` when no route matched.
ROUTES = ("/health", "/metrics", "/v1/files/*", "/v1/files/ws/*", "/v1/directories/*",
          "/v1/links/generate", "/download/{token}", "/v1/shards/*", "unmatched")
FILES_ROUTE = "/v1/files/*"
STATUSES = tuple(str(code) for code in (
    100, 101, 200, 201, 204, 206, 207, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408,
    409, 410, 411, 412, 413, 414, 415, 416, 417, 422, 423, 424, 429, 431, 499, 500, 501, 502,
    503, 504, 505, 507)) + ("other",)
BACKENDS = ("localfs", "s3", "erasure", "peer")
FILE_OPERATIONS = ("create", "write", "read", "delete", "move", "copy", "mkdir", "list")
BACKEND_OPERATIONS = ("write", "read", "delete", "move", "copy")
METADATA_OPERATIONS = ("get", "get_many", "list_children", "list_descendants", "create",
                       "set_attributes", "move", "path_of", "max_fence", "update_content",
                       "delete", "create_link", "consume_link", "sweep_links")
LOCK_OPERATIONS = ("acquire", "release")
LOCK_STATUSES = ("success", "timeout", "error", "lost")
LINK_STATUSES = ("success", "expired", "invalid", "not_found")
AUTH_REASONS = ("missing", "unknown_key")
COMPONENTS = ("http", "engine", "metadata", "locks", "backend", "links", "recovery", "log")
ERROR_TYPES = ("internal_error", "service_unavailable", "lock_timeout", "storage_inconsistent",
               "timeout", "unexpected")
RECOVERY_ACTIONS = ("taken_back", "rolled_forward", "intent_removed", "restored",
                    "move_finished")


class Family:
    def __init__(self, name: str, kind: str, help: str, labels=()):
        self.name = name
        self.kind = kind  # counter, gauge, histogram
        self.help = help
        self.label_names = tuple(name for name, _ in labels)
        self.label_values = tuple(tuple(values) for _, values in labels)
        self.positions = tuple({v: i for i, v in enumerate(values)} for values in self.label_values)
        self.width = len(BUCKETS) + 2 if kind == "histogram" else 1
        self.series = math.prod(len(values) for values in self.label_values)
        self.size = self.series * self.width
        self.base = 0

    def cell(self, *values: str) -> int:
        """The first cell of the series with these label values (KeyError for a value the
        family does not declare)."""
        index = 0
        for position, value in zip(self.positions, values):
            index = index * len(position) + position[value]
        return self.base + index * self.width

    def values_of(self, index: int) -> tuple:
        """The label values of series `index` (the inverse of `cell`)."""
        values = []
        for choices in reversed(self.label_values):
            index, position = divmod(index, len(choices))
            values.append(choices[position])
        return tuple(reversed(values))


def _families():
    counter, gauge, histogram = "counter", "gauge", "histogram"
    method, route = ("method", METHODS), ("path", ROUTES)
    return [
        Family("callfs_http_requests_total", counter,
               "HTTP requests answered, by method, route template and status.",
               [method, route, ("status_code", STATUSES)]),
        Family("callfs_http_request_duration_seconds", histogram,
               "Time from a request's first byte to the end of its response.", [method, route]),
        Family("callfs_http_requests_aborted_total", counter,
               "Requests whose client went away before the response was complete.",
               [method, route]),
        Family("callfs_http_requests_in_flight", gauge,
               "Requests received and not yet answered in full."),
        Family("callfs_http_open_connections", gauge, "Client connections open."),
        Family("callfs_http_request_body_bytes_total", counter,
               "Request body bytes received, by route template.", [route]),
        Family("callfs_http_response_body_bytes_total", counter,
               "Response body bytes sent, by route template.", [route]),
        Family("callfs_hot_path_responses_total", counter,
               "GET/HEAD answered from the metadata cache in one write."),
        Family("callfs_auth_failures_total", counter,
               "Requests refused for want of a valid key, by reason.",
               [("reason", AUTH_REASONS)]),
        Family("callfs_file_operations_total", counter,
               "File operations attempted, by operation and backend.",
               [("operation", FILE_OPERATIONS), ("backend_type", BACKENDS)]),
        Family("callfs_backend_ops_total", counter, "Backend operations, by backend and operation.",
               [("backend_type", BACKENDS), ("operation", BACKEND_OPERATIONS)]),
        Family("callfs_backend_op_duration_seconds", histogram,
               "Time of backend operations, by backend and operation.",
               [("backend_type", BACKENDS), ("operation", BACKEND_OPERATIONS)]),
        Family("callfs_single_use_link_generations_total", counter, "Single-use links created."),
        Family("callfs_single_use_link_consumptions_total", counter,
               "Single-use link redemptions that reached validation, by outcome.",
               [("status", LINK_STATUSES)]),
        Family("callfs_metadata_db_queries_total", counter,
               "Metadata store operations (the database, not the cache), by operation.",
               [("operation", METADATA_OPERATIONS)]),
        Family("callfs_metadata_db_query_duration_seconds", histogram,
               "Time of metadata store operations, by operation.",
               [("operation", METADATA_OPERATIONS)]),
        Family("callfs_lock_operations_total", counter, "Lock operations, by operation and outcome.",
               [("operation", LOCK_OPERATIONS), ("status", LOCK_STATUSES)]),
        Family("callfs_lock_operation_duration_seconds", histogram,
               "Time of lock operations (an acquisition's includes its wait).",
               [("operation", LOCK_OPERATIONS)]),
        Family("callfs_lock_waits_total", counter,
               "Lock acquisitions that found a key held and waited."),
        Family("callfs_active_locks", gauge, "Locks held by this instance."),
        Family("callfs_errors_total", counter, "Server-side failures, by component and kind.",
               [("component", COMPONENTS), ("error_type", ERROR_TYPES)]),
        Family("callfs_recovery_actions_total", counter,
               "Interrupted writes finished or undone by recovery, by action.",
               [("action", RECOVERY_ACTIONS)]),
        Family("callfs_log_lines_dropped_total", counter,
               "Log lines dropped because the log's buffer was full."),
        Family("callfs_worker_restarts_total", counter, "Worker processes replaced after exiting."),
    ]


class Schema:
    """The families and where each one's cells are."""

    def __init__(self):
        self.families = _families()
        offset = 0
        for family in self.families:
            family.base = offset
            offset += family.size
        self.cells = offset
        self.by_name = {family.name: family for family in self.families}
        self.gauges = [(f.base, f.base + f.size) for f in self.families if f.kind == "gauge"]

    def __getitem__(self, name: str) -> Family:
        return self.by_name[name]


SCHEMA = Schema()


def table(slots: int) -> Tally:
    """The shared table for `slots` processes (made before forking)."""
    return Tally(SCHEMA.cells, slots, BUCKETS)


class Metrics:
    """Named additions to the instance's table, for this process's slot."""

    def __init__(self, tally: Tally):
        self.tally = tally
        s = SCHEMA
        self._requests = s["callfs_http_requests_total"]
        self._duration = s["callfs_http_request_duration_seconds"]
        self._aborted = s["callfs_http_requests_aborted_total"]
        self._in_flight = s["callfs_http_requests_in_flight"].cell()
        self._connections = s["callfs_http_open_connections"].cell()
        self._received = s["callfs_http_request_body_bytes_total"]
        self._sent = s["callfs_http_response_body_bytes_total"]
        self._auth = s["callfs_auth_failures_total"]
        self._file_ops = s["callfs_file_operations_total"]
        self._backend_ops = s["callfs_backend_ops_total"]
        self._backend_time = s["callfs_backend_op_duration_seconds"]
        self._link_generations = s["callfs_single_use_link_generations_total"].cell()
        self._link_consumptions = s["callfs_single_use_link_consumptions_total"]
        self._db = s["callfs_metadata_db_queries_total"]
        self._db_time = s["callfs_metadata_db_query_duration_seconds"]
        self._lock_ops = s["callfs_lock_operations_total"]
        self._lock_time = s["callfs_lock_operation_duration_seconds"]
        self._lock_waits = s["callfs_lock_waits_total"].cell()
        self._active_locks = s["callfs_active_locks"].cell()
        self._errors = s["callfs_errors_total"]
        self._recovery = s["callfs_recovery_actions_total"]
        self._dropped = s["callfs_log_lines_dropped_total"].cell()
        self._restarts = s["callfs_worker_restarts_total"].cell()
        self._request_cells: dict = {}

    def claim(self, slot: int) -> None:
        """This process counts in row `slot`; the gauges of that row start at zero."""
        self.tally.claim(slot, SCHEMA.gauges)

    # -- http ------------------------------------------------------------------------------

    def hot_cells(self) -> tuple:
        """The cells the hot path adds to (callfs/_native/httphead.pyx): requests and
        durations of GET and HEAD 200 on the files route, its response bytes, its answers."""
        return (self._requests.cell("GET", FILES_ROUTE, "200"),
                self._requests.cell("HEAD", FILES_ROUTE, "200"),
                self._duration.cell("GET", FILES_ROUTE),
                self._duration.cell("HEAD", FILES_ROUTE),
                self._sent.cell(FILES_ROUTE),
                SCHEMA["callfs_hot_path_responses_total"].cell())

    def read_cells(self) -> dict:
        """backend -> the cell of file_operations{operation="read"}: the hot path's downloads."""
        return {backend: self._file_ops.cell("read", backend) for backend in BACKENDS}

    def request(self, method: bytes, route: str, status: int, duration_ns: int,
                received: int, sent: int) -> None:
        key = (method, route, status)
        cells = self._request_cells.get(key)
        if cells is None:
            name = method.decode("latin-1")
            name = name if name in self._duration.positions[0] else "OTHER"
            code = str(status)
            code = code if code in self._requests.positions[2] else "other"
            cells = (self._requests.cell(name, route, code), self._duration.cell(name, route),
                     self._received.cell(route), self._sent.cell(route))
            if len(self._request_cells) < 4096:
                self._request_cells[key] = cells
        tally = self.tally
        tally.add(cells[0])
        tally.observe_nanos(cells[1], duration_ns)
        if received:
            tally.add(cells[2], received)
        if sent:
            tally.add(cells[3], sent)

    def aborted(self, method: bytes, route: str, received: int, sent: int) -> None:
        name = method.decode("latin-1")
        name = name if name in self._aborted.positions[0] else "OTHER"
        self.tally.add(self._aborted.cell(name, route))
        if received:
            self.tally.add(self._received.cell(route), received)
        if sent:
            self.tally.add(self._sent.cell(route), sent)

    def in_flight(self, change: int) -> None:
        self.tally.add(self._in_flight, change)

    def connections(self, change: int) -> None:
        self.tally.add(self._connections, change)

    def auth_failed(self, reason: str) -> None:
        self.tally.add(self._auth.cell(reason))

    # -- engine, backends, links, recovery (core/observer.py) -----------------------------

    def file_operation(self, operation: str, backend: str) -> None:
        self.tally.add(self._file_ops.cell(operation, backend))

    def backend_operation(self, backend: str, operation: str, seconds: float) -> None:
        self.tally.add(self._backend_ops.cell(backend, operation))
        self.tally.observe(self._backend_time.cell(backend, operation), seconds)

    def link_generated(self) -> None:
        self.tally.add(self._link_generations)

    def link_consumed(self, status: str) -> None:
        self.tally.add(self._link_consumptions.cell(status))

    def recovered(self, action: str) -> None:
        self.tally.add(self._recovery.cell(action))

    def error(self, component: str, error_type: str) -> None:
        if error_type not in self._errors.positions[1]:
            error_type = "unexpected"
        self.tally.add(self._errors.cell(component, error_type))

    # -- metadata (metadata/measured.py) and locks (locks/measured.py) --------------------

    def metadata_query(self, operation: str, seconds: float, failed: bool) -> None:
        self.tally.add(self._db.cell(operation))
        self.tally.observe(self._db_time.cell(operation), seconds)
        if failed:
            self.error("metadata", "service_unavailable")

    def lock_operation(self, operation: str, status: str, seconds: float) -> None:
        self.tally.add(self._lock_ops.cell(operation, status))
        self.tally.observe(self._lock_time.cell(operation), seconds)
        if operation == "acquire" and status == "success":
            self.tally.add(self._active_locks, 1)
        elif operation == "release":
            self.tally.add(self._active_locks, -1)

    def lock_waited(self) -> None:
        self.tally.add(self._lock_waits)

    # -- the process ----------------------------------------------------------------------

    def dropped_cell(self) -> int:
        """The cell of callfs_log_lines_dropped_total, which the log's sink adds to."""
        return self._dropped

    def worker_restarted(self) -> None:
        self.tally.add(self._restarts)


# -- the text exposition format ------------------------------------------------------------

def _labels(names, values, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(tally: Tally) -> bytes:
    """Every family in the text format (version 0.0.4). A labelled family lists the series
    that have a sample; one without labels is always listed."""
    totals = tally.totals()
    used = sorted(totals)
    out = []
    for family in SCHEMA.families:
        if family.label_names:
            low = bisect.bisect_left(used, family.base)
            high = bisect.bisect_left(used, family.base + family.size)
            indexes = sorted({(cell - family.base) // family.width for cell in used[low:high]})
        else:
            indexes = [0]
        lines = []
        for index in indexes:
            values = family.values_of(index)
            first = family.base + index * family.width
            if family.kind == "histogram":
                _histogram(lines, family, values, [totals.get(first + i, 0)
                                                   for i in range(len(BUCKETS) + 2)])
            else:
                lines.append(f"{family.name}{_labels(family.label_names, values)} "
                             f"{totals.get(first, 0)}")
        if lines or not family.label_names:
            out.append(f"# HELP {family.name} {family.help}")
            out.append(f"# TYPE {family.name} {family.kind}")
            out.extend(lines)
    out.append("")
    return "\n".join(out).encode()


def _histogram(lines: list, family: Family, values: tuple, cells: list) -> None:
    """A series' cumulative buckets, sum and count from its cells (per-bucket counts, +Inf,
    the sum in nanoseconds)."""
    running = 0
    for bound, bucket in zip(BUCKETS + (math.inf,), cells):
        running += bucket
        le = 'le="+Inf"' if bound == math.inf else f'le="{float(bound)!r}"'
        lines.append(f"{family.name}_bucket{_labels(family.label_names, values, le)} {running}")
    labels = _labels(family.label_names, values)
    lines.append(f"{family.name}_sum{labels} {cells[-1] / 1e9!r}")
    lines.append(f"{family.name}_count{labels} {running}")


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
