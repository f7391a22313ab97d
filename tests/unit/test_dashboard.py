"""docs/grafana-dashboard.json and docs/monitoring.md against the metric families the server
declares (callfs/observability/metrics.py), so neither can fall behind the code.

The dashboard must import into Grafana as it is (its keys, a data source input, an `instance`
variable, panels with ids, positions and queries), and every query on it or on the page may name
only families that exist, labels those families have, and label values they can take. The
page's table of families must list every family with its type and labels.
"""
import json
import re
from pathlib import Path

import pytest

from callfs.observability.metrics import SCHEMA

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
PAGE = DOCS / "monitoring.md"

METRIC = re.compile(r"callfs_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds (instance, job) or the histogram's own (le).
TARGET_LABELS = {"le", "instance", "job"}
MATCHERS = re.compile(r"(callfs_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
MADE_LABEL = re.compile(r'label_replace\s*\(.*?,\s*"(\w+)"', re.S)  # its destination label
GRID_COLUMNS = 24


def family_of(name: str):
    """The family a series name belongs to (a histogram's series carry a suffix), or None."""
    if name in SCHEMA.by_name:
        return SCHEMA[name]
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            family = SCHEMA.by_name.get(name[: -len(suffix)])
            if family is not None and family.kind == "histogram":
                return family
    return None


def _balanced(text: str, open_at: int) -> int:
    """The index just past the parenthesis that closes the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _opening(text: str, close_at: int) -> int:
    """The index of the parenthesis that the one at `close_at` closes."""
    depth = 0
    for i in range(close_at, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _aggregated(expr: str, clause: re.Match) -> str:
    """The argument an aggregation's `by (...)` applies to: the group right after the clause
    (`sum by (x) (...)`), else the one right before its keyword (`sum(...) by (x)`)."""
    after = expr[clause.end():].lstrip()
    if after.startswith("("):
        start = len(expr) - len(after)
        return expr[start:_balanced(expr, start)]
    before = expr[:clause.start()].rstrip()
    assert before.endswith(")"), f"a {clause.group(1)} clause with no argument: {expr!r}"
    return before[_opening(before, len(before) - 1):]


def problems_of(expr: str) -> list[str]:
    """What in one PromQL expression names something the server does not export."""
    found = []
    for name in METRIC.findall(expr):
        if family_of(name) is None:
            found.append(f"{name} is not a family in SCHEMA")
    for match in MATCHERS.finditer(expr):
        family = family_of(match.group(1))
        if family is None:
            continue
        for label, op, value in MATCHER.findall(match.group(2)):
            if label in TARGET_LABELS:
                continue
            if label not in family.label_names:
                found.append(f"{family.name} has no label {label!r}")
                continue
            values = family.label_values[family.label_names.index(label)]
            if "$" in value:
                continue  # a dashboard variable
            if op == "=" and value not in values:
                found.append(f"{family.name}: {label}={value!r} is not a value it takes")
            if op == "=~" and not any(re.fullmatch(value, v) for v in values):
                found.append(f"{family.name}: {label}=~{value!r} matches no value it takes")
    for clause in GROUPING.finditer(expr):
        labels = [label.strip() for label in clause.group(2).split(",") if label.strip()]
        argument = _aggregated(expr, clause)
        families = [family_of(name) for name in METRIC.findall(argument)]
        assert families, f"a {clause.group(1)} clause over no metric: {expr!r}"
        made = set(MADE_LABEL.findall(argument))
        for family in filter(None, families):
            for label in labels:
                if label not in TARGET_LABELS | made and label not in family.label_names:
                    found.append(f"{clause.group(1)} ({label}) over {family.name}, "
                                 f"which has no such label")
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_has_what_an_import_needs(dashboard):
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "__inputs"):
        assert key in dashboard, key
    assert dashboard["schemaVersion"] == 39
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert "instance" in variables
    assert not problems_of(json.dumps(variables["instance"]["query"]))


def test_every_panel_has_an_id_a_place_and_queries(dashboard):
    panels = dashboard["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    cells = set()
    for panel in panels:
        where = f"panel {panel['id']} ({panel.get('title')})"
        assert panel["type"] in ("timeseries", "stat"), where
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, where
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{where} overlaps another panel"
        cells |= covered
        targets = panel["targets"]
        assert targets, where
        refs = [target["refId"] for target in targets]
        assert all(refs) and len(refs) == len(set(refs)), where
        for target in targets:
            assert target["expr"].strip(), where


def test_every_query_names_families_labels_and_values_that_exist(dashboard):
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), target["expr"]
            found += [f"panel {panel['id']} {target['refId']}: {problem}"
                      for problem in problems_of(target["expr"])]
    assert not found, "\n".join(found)


def _table_rows() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`callfs_[a-z_]+`", cells[0]):
            continue
        labels = tuple(re.findall(r"`(\w+)`", cells[2])) if cells[2] != "—" else ()
        rows[cells[0].strip("`")] = (cells[1], labels)
    return rows


def test_the_page_lists_every_family_with_its_type_and_labels():
    rows = _table_rows()
    missing = [family.name for family in SCHEMA.families if family.name not in rows]
    assert not missing, f"docs/monitoring.md's table lacks {missing}"
    unknown = sorted(set(rows) - set(SCHEMA.by_name))
    assert not unknown, f"docs/monitoring.md's table lists families the server lacks: {unknown}"
    for family in SCHEMA.families:
        assert rows[family.name] == (family.kind, family.label_names), family.name


def test_the_queries_on_the_page_name_families_labels_and_values_that_exist():
    blocks = re.findall(r"^```promql\n(.*?)^```", PAGE.read_text(), re.M | re.S)
    assert blocks
    found = []
    for block in blocks:
        # One expression per line; a line that starts with an operator continues the last.
        exprs = []
        for line in block.splitlines():
            if exprs and re.match(r"\s+[-+*/]|\s+(and|or|unless)\b", line):
                exprs[-1] += " " + line.strip()
            elif line.strip():
                exprs.append(line.strip())
        for expr in exprs:
            found += [f"{expr}: {problem}" for problem in problems_of(expr)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("expr, problem", [
    ("rate(callfs_no_such_total[5m])", "not a family"),
    ("rate(callfs_http_requests_total_bucket[5m])", "not a family"),
    ('rate(callfs_http_requests_total{route="/health"}[5m])', "no label 'route'"),
    ('rate(callfs_lock_operations_total{status="timed_out"}[5m])', "not a value"),
    ('rate(callfs_http_requests_total{status_code=~"6.."}[5m])', "matches no value"),
    ("sum by (operation) (rate(callfs_http_requests_total[5m]))", "no such label"),
    ("sum(rate(callfs_active_locks[5m])) by (path)", "no such label"),
    ('sum by (class) (label_replace(rate(callfs_errors_total[5m]), "kind", "$1", '
     '"error_type", "(.*)"))', "no such label"),
])
def test_the_checks_catch_what_they_are_for(expr, problem):
    assert any(problem in found for found in problems_of(expr)), problems_of(expr)


def test_the_checks_pass_what_is_right():
    assert problems_of(
        'histogram_quantile(0.95, sum by (le, path) (rate('
        'callfs_http_request_duration_seconds_bucket{instance=~"$instance",method="GET"}[5m])))'
        ' / sum(rate(callfs_hot_path_responses_total[5m])) by (job)') == []
    assert problems_of(
        'sum by (path, class) (label_replace(rate(callfs_http_requests_total[5m]), "class", '
        '"${1}xx", "status_code", "([1-5]).."))') == []
