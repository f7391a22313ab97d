"""What the load suite leaves behind: one table on stdout, every raw number in a JSON file."""
import dataclasses
import json
import os
import platform
import subprocess

# field -> unit shown in the row's label
UNITS = {"req_per_s": "req/s", "mb_per_s": "MB/s", "p50_us": "p50 µs", "p99_us": "p99 µs",
         "rss_peak_mib": "peak RSS MiB"}
HEADER = ("workload", "nginx", "ceiling", "CallFS", "CallFS/nginx", "CallFS/ceiling")


def _value(row: dict | None, field: str) -> float | None:
    if row is None:
        return None
    if field in ("p50_us", "p99_us"):
        return float(row["latency_us"][field[:3]])
    if field == "rss_peak_mib":
        return row["rss_peak_kib"] / 1024
    return row[field]


def _format(value: float | None, field: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if field == "rss_peak_mib" else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def summary(row: dict) -> str:
    """One progress line for stderr."""
    lat = row["latency_us"]
    return (f"{row['req_per_s']:>10,.0f} req/s {row['mb_per_s']:>8,.0f} MB/s  "
            f"p50 {lat['p50']:,} µs p99 {lat['p99']:,} µs  "
            f"RSS {row['rss_peak_kib'] / 1024:,.1f} MiB  CPU busy: server "
            f"{row['cpu_busy']['server_cpus']:.0%}, wrk {row['cpu_busy']['load_cpus']:.0%}, "
            f"stolen {row['cpu_busy']['stolen']:.0%}; others used {row['other_cpu_s']:.1f} s")


def table(workloads, results: list[dict]) -> list[dict]:
    """The rows of the table, in order, as numbers (None where there is no measurement)."""

    def find(key, column, variant=None):
        for r in results:
            if r["workload"] == key and r["server"] == column \
                    and (variant is None or r["variant"] == variant):
                return r
        return None

    rows = []

    def add(w, field, label, callfs="fsync off", ceiling="bytes"):
        values = {"nginx": _value(find(w.key, "nginx"), field),
                  "ceiling": _value(find(w.key, "ceiling", ceiling), field),
                  "callfs": _value(find(w.key, "callfs", callfs), field)}
        rows.append({"workload": f"{w.group} {label} ({UNITS[field]})", "field": field,
                     **values,
                     "callfs_per_nginx": _ratio(values["callfs"], values["nginx"]),
                     "callfs_per_ceiling": _ratio(values["callfs"], values["ceiling"])})

    def add_workload(w, suffix="", ceiling="bytes"):
        title = w.title + suffix
        if w.by_bytes:
            add(w, "mb_per_s", title)
        elif w.latency:
            add(w, "p50_us", title, ceiling=ceiling)
            add(w, "p99_us", title, ceiling=ceiling)
        elif w.method == "PUT":
            add(w, "req_per_s", title + ", fsync off")
            add(w, "req_per_s", title + ", fsync on", callfs="fsync on")
        else:
            add(w, "req_per_s", title, ceiling=ceiling)
        if w.rss and not suffix:
            add(w, "rss_peak_mib", title)

    pinned = [w for w in workloads if w.workers == 1]
    for w in pinned:
        add_workload(w)
    for w in pinned:
        if w.ceiling:
            add_workload(w, ", ceiling sendfile", ceiling="sendfile")
    for w in workloads:
        if w.workers != 1:
            add_workload(w, " unpinned")
    return rows


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
        "schema": 1,
        "status": "failed" if error else "ok",
        "error": error,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "options": {"duration_s": args.duration, "warmup_s": ctx.warmup, "smoke": args.smoke,
                    "only": sorted(args.only), "ceiling": args.ceiling or None},
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
        cells.append((row["workload"], _format(row["nginx"], field),
                      _format(row["ceiling"], field), _format(row["callfs"], field),
                      "—" if row["callfs_per_nginx"] is None else f"{row['callfs_per_nginx']:.2f}",
                      "—" if row["callfs_per_ceiling"] is None
                      else f"{row['callfs_per_ceiling']:.2f}"))
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
            f"{doc['options']['duration_s']:g} s per run; servers on CPU {pin['server_cpus']}, "
            f"wrk on CPU {pin['load_cpus']} (unpinned rows: CPUs {pin['unpinned_cpus']}). "
            "MB = 10^6 bytes.",
            "µs and MiB rows: lower is better, so there a ratio above 1 means CallFS is slower "
            "or larger."]
    out += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(out)
