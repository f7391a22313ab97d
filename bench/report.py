"""What the load suite leaves behind: one table on stdout, every raw number in a JSON file."""
import dataclasses
import json
import os
import platform
import statistics
import subprocess

# field -> unit shown in the row's label
UNITS = {"req_per_s": "req/s", "mb_per_s": "MB/s", "p50_us": "p50 µs", "p99_us": "p99 µs",
         "rss_peak_mib": "peak RSS MiB"}
HEADER = ("workload", "nginx", "ceiling", "CallFS", "CallFS log off", "CallFS/nginx",
          "CallFS/ceiling", "log on/off")
LOWER_IS_BETTER = {"p50_us", "p99_us", "rss_peak_mib"}
LOG_TARGET = 0.05  # the access log's cost a row may show: within 5 % of the log off


def _value(row: dict | None, field: str) -> float | None:
    if row is None:
        return None
    if field in ("p50_us", "p99_us"):
        return float(row["latency_us"][field[:3]])
    if field == "rss_peak_mib":
        return row["rss_peak_kib"] / 1024
    return row[field]


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _format(value: float | None, field: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if field == "rss_peak_mib" else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def summary(row: dict) -> str:
    """One progress line for stderr."""
    lat = row["latency_us"]
    log = row["access_log"]
    logged = "" if log is None else (f"; access log {log['lines']:,} lines"
                                     + (f", {log['dropped']:,} dropped" if log["dropped"]
                                        else ""))
    return (f"{row['req_per_s']:>10,.0f} req/s {row['mb_per_s']:>8,.0f} MB/s  "
            f"p50 {lat['p50']:,} µs p99 {lat['p99']:,} µs  "
            f"RSS {row['rss_peak_kib'] / 1024:,.1f} MiB  CPU busy: server "
            f"{row['cpu_busy']['server_cpus']:.0%}, wrk {row['cpu_busy']['load_cpus']:.0%}, "
            f"stolen {row['cpu_busy']['stolen']:.0%}; others used {row['other_cpu_s']:.1f} s"
            f"{logged}")


def table(workloads, results: list[dict]) -> list[dict]:
    """The rows of the table, in order, as numbers (None where there is no measurement)."""

    def runs(key, column, variant=None, logged=True) -> list[dict]:
        """The timed runs of one cell, in turn order (several for CallFS with --turns)."""
        return [r for r in results
                if r["workload"] == key and r["server"] == column
                and (variant is None or r["variant"] == variant)
                and (column != "callfs" or r["access_log"]["on"] == logged)]

    def find(key, column, variant=None, logged=True):
        found = runs(key, column, variant, logged)
        return found[0] if found else None

    rows = []

    def add(w, field, label, callfs="fsync off", ceiling="bytes", repeat=False):
        on = [_value(r, field) for r in runs(w.key, "callfs", callfs)]
        off = [_value(r, field) for r in runs(w.key, "callfs", callfs, logged=False)]
        values = {"nginx": _value(find(w.key, "nginx"), field),
                  "ceiling": _value(find(w.key, "ceiling", ceiling), field),
                  "callfs": _median(on), "callfs_log_off": _median(off)}
        # Each turn's pair was measured seconds apart: the ratio is the median of theirs.
        pairs = [a / b for a, b in zip(on, off) if a is not None and b]
        rows.append({"workload": f"{w.group} {label} ({UNITS[field]})", "field": field,
                     **values,
                     "callfs_per_nginx": _ratio(values["callfs"], values["nginx"]),
                     "callfs_per_ceiling": _ratio(values["callfs"], values["ceiling"]),
                     "log_on_per_off": round(statistics.median(pairs), 2) if pairs else None,
                     "log_on_per_off_turns": [round(x, 3) for x in pairs],
                     "repeat": repeat})

    def add_workload(w, suffix="", ceiling="bytes"):
        title, repeat = w.title + suffix, ceiling != "bytes"
        if w.by_bytes:
            add(w, "mb_per_s", title)
        elif w.latency:
            add(w, "p50_us", title, ceiling=ceiling, repeat=repeat)
            add(w, "p99_us", title, ceiling=ceiling, repeat=repeat)
        elif w.method == "PUT":
            add(w, "req_per_s", title + ", fsync off")
            add(w, "req_per_s", title + ", fsync on", callfs="fsync on")
        else:
            add(w, "req_per_s", title, ceiling=ceiling, repeat=repeat)
        if w.rss and not suffix:
            add(w, "rss_peak_mib", title)

    pinned = [w for w in workloads if w.workers == 1]
    for w in pinned:
        add_workload(w)
    for w in pinned:
        # Only when the ceiling ran in that mode: otherwise the row would repeat another.
        if w.ceiling and find(w.key, "ceiling", "sendfile") is not None:
            add_workload(w, ", ceiling sendfile", ceiling="sendfile")
    for w in workloads:
        if w.workers != 1:
            add_workload(w, " unpinned")
    return rows


def over_log_target(rows: list[dict]) -> list[dict]:
    """The rows (repeats left out) whose log on/off ratio shows CallFS with its access log
    more than LOG_TARGET slower, or larger, than without."""
    found = []
    for row in rows:
        ratio = row["log_on_per_off"]
        if row["repeat"] or ratio is None:
            continue
        cost = ratio - 1 if row["field"] in LOWER_IS_BETTER else 1 - ratio
        if cost > LOG_TARGET:
            found.append(row)
    return found


def _git(repo: str, *args) -> str | None:
    # --no-optional-locks: reading the status must not rewrite the index others are using.
    try:
        out = subprocess.run(["git", "--no-optional-locks", "-C", repo, *args],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(repo: str, cpus: dict, versions: dict) -> dict:
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "pinning": {"server_cpus": cpus["server"], "load_cpus": cpus["load"],
                    "unpinned_cpus": cpus["all"], "shared": cpus["shared"]},
        "versions": versions,
    }


def document(args, started, elapsed: float, env: dict, ctx, workloads, error) -> dict:
    return {
        "schema": 2,
        "status": "failed" if error else "ok",
        "error": error,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "options": {"duration_s": args.duration, "warmup_s": ctx.warmup, "smoke": args.smoke,
                    "only": sorted(args.only), "ceiling": args.ceiling or None,
                    "turns": args.turns},
        "environment": env,
        "workloads": [dataclasses.asdict(w) | {"path": w.path} for w in workloads],
        "results": ctx.results,
        "table": table(workloads, ctx.results),
        "notes": ctx.notes,
    }


def write_json(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def render(doc: dict) -> str:
    """The table as Markdown (readable as is in a terminal), then what a reader must know."""
    cells = [HEADER]
    for row in doc["table"]:
        field = row["field"]
        cells.append((row["workload"], *(_format(row[k], field) for k in
                                         ("nginx", "ceiling", "callfs", "callfs_log_off")),
                      *("—" if row[k] is None else f"{row[k]:.2f}" for k in
                        ("callfs_per_nginx", "callfs_per_ceiling", "log_on_per_off"))))
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(c):
        first = c[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(c[1:], widths[1:])]
        return "| " + " | ".join([first] + rest) + " |"

    out = [line(cells[0]),
           "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                          for i, w in enumerate(widths)) + "|"]
    out += [line(c) for c in cells[1:]]
    pin = doc["environment"]["pinning"]
    out += ["",
            f"{doc['options']['duration_s']:g} s per run"
            + (f" (CallFS: {doc['options']['turns']} turns each with and without its access "
               "log, medians)" if doc["options"].get("turns", 1) > 1 else "")
            + f"; servers on CPU {pin['server_cpus']}, "
            f"wrk on CPU {pin['load_cpus']} (unpinned rows: CPUs {pin['unpinned_cpus']}). "
            "MB = 10^6 bytes.",
            "µs and MiB rows: lower is better, so there a ratio above 1 means CallFS is slower "
            "or larger.",
            "CallFS and nginx log each request as they do by default; CallFS log off: the same "
            "build at log.level warn, in turns with it."]
    over = over_log_target(doc["table"])
    if over:
        out.append(f"the access log costs more than {LOG_TARGET:.0%} in: " + "; ".join(
            f"{row['workload']} {row['log_on_per_off']:.2f}" for row in over))
    out += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(out)
