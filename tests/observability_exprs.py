"""Every PromQL expression of the dashboards and alert rules, and the metric names they use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS_DIR = GRAFANA / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"

# Grafana's variables, replaced by values a plain Prometheus accepts.
GRAFANA_VALUES = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# label_values(metric, label) and friends in Grafana variable queries.
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:([^,()]+?)\s*,\s*)?(\w+)\s*\)\s*$")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's ``$variables``: intervals by durations, label filters by ``.*``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return GRAFANA_VALUES.get(name, ".*")

    return _VARIABLE.sub(value, expr)


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target of every dashboard."""
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    where = f"{path.name}: {panel['title']} [{target['refId']}]"
                    yield where, grafana_to_promql(target["expr"])


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows may nest panels


def variable_queries() -> Iterator[tuple[str, str | None, str]]:
    """``(where, metric or None, label)`` for every ``label_values`` variable query."""
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text)
            if match is None:
                raise ValueError(f"{path.name}: variable {variable['name']}: unknown query {text}")
            yield f"{path.name}: ${variable['name']}", match.group(1), match.group(2)


def rule_exprs(path: Path = ALERTS) -> Iterator[tuple[str, str]]:
    """``(alert or record name, PromQL)`` for every rule of a rules file."""
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def all_exprs() -> list[tuple[str, str]]:
    return [*dashboard_exprs(), *rule_exprs()]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names, keywords, label names in
    matchers or ``by (...)`` lists, and durations are not metric names)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    # A selector with only a matcher: {__name__="..."}.
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names
