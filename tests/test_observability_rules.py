"""Prometheus config, alert rules and dashboards: promtool checks, alert unit tests, and every
PromQL expression parsing and naming only metrics the code exports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ldawt.daemon import metrics as daemon_metrics
from ldawt.manager import metrics as manager_metrics

try:  # tests/ may be a package or a plain folder on sys.path
    from . import observability_exprs as ox
    from .prometheus_server import PROMTOOL
except ImportError:
    import observability_exprs as ox
    from prometheus_server import PROMTOOL

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)"),
]

DASHBOARD_UIDS = {"ldawt-fleet", "ldawt-worker", "ldawt-hosts"}
# Series Prometheus itself attaches to every target.
PROMETHEUS_SERIES = {"up"}


def promtool(*args: str, cwd: Path = ox.PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    run = promtool("check", "rules", "alerts.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_check_config() -> None:
    run = promtool("check", "config", "prometheus.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_alert_unit_tests_pass() -> None:
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def alert_names() -> list[str]:
    return [name for name, _ in ox.rule_exprs()]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load((ox.PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for alert in alert_names():
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"{alert} is never expected to fire"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert} is never expected quiet"


@pytest.mark.parametrize("alert", alert_names())
@pytest.mark.parametrize("mutant", ["vector(1) < 0", "vector(1)"], ids=["never", "always"])
def test_alert_unit_tests_notice_a_broken_rule(alert: str, mutant: str, tmp_path: Path) -> None:
    """Replacing an alert's expression by one that never (or always) fires fails its tests."""
    rules = yaml.safe_load(ox.ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = mutant
                rule.pop("for", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(ox.PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    run = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert run.returncode != 0, f"alerts_test.yml still passes with {alert}: {mutant}"
    assert alert in run.stdout + run.stderr


def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each dashboard and rule expression (as a recording rule)."""
    exprs = ox.all_exprs()
    assert len(exprs) > 30
    files = []
    for index, (_where, expr) in enumerate(exprs):
        rule = {"record": f"ldawt_check:expr_{index}", "expr": expr}
        files.append(tmp_path / f"expr_{index}.yml")
        files[-1].write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": [rule]}]}))
    run = promtool("check", "rules", *(f.name for f in files), cwd=tmp_path)
    if run.returncode != 0:
        failing = {
            where: promtool("check", "rules", path.name, cwd=tmp_path).stdout
            for (where, _expr), path in zip(exprs, files, strict=True)
            if promtool("check", "rules", path.name, cwd=tmp_path).returncode != 0
        }
        pytest.fail(f"unparsable expressions: {failing}")


def exported_names() -> set[str]:
    """Sample names the daemon's and the manager's registries export once exercised."""
    daemon_metrics._preinitialize_statuses()
    daemon_metrics.watch_workspace(ox.GRAFANA)
    for histogram in (
        daemon_metrics.REQUEST_DURATION,
        daemon_metrics.TIME_TO_FIRST_BYTE,
        daemon_metrics.SHARD_DURATION,
    ):
        histogram.observe(0.3)
    labels = daemon_metrics.BoundedHostLabels()("origin.test")
    daemon_metrics.observe_response(labels, 429)
    daemon_metrics.HOST_WAIT.labels(labels).inc(0.1)
    daemon_metrics.HOST_PAUSES.labels(labels).inc()
    daemon_metrics.HOST_HALVINGS.labels(labels).inc()
    daemon_metrics.HOST_LIMIT.labels(labels).set(4)
    daemon_metrics.RETRIES.labels("timeout").inc()
    manager_metrics.record_shard_result(
        {"ok": True, "counts": {"ok": 1}, "bytes": 1, "elapsed_s": 1.0}
    )
    names: set[str] = set()
    registry: CollectorRegistry
    for registry in (daemon_metrics.REGISTRY, manager_metrics.REGISTRY):
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
    return names


def test_metric_name_extraction() -> None:
    assert ox.metric_names(
        'histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{le="1",x=~"y|z"}[5m])))'
    ) == {"a_bucket"}
    assert ox.metric_names("sum(b) / sum(c offset 1h) > 1e9 and on() time() - d < 600") == {
        "b",
        "c",
        "d",
    }
    assert ox.metric_names('{__name__="e_total"}') == {"e_total"}


def test_expressions_only_use_exported_metrics() -> None:
    exported = exported_names() | PROMETHEUS_SERIES
    assert "process_open_fds" in exported  # Linux: the process collector is there
    unknown = {}
    for where, expr in ox.all_exprs():
        names = ox.metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        if names - exported:
            unknown[where] = sorted(names - exported)
    for where, metric, _label in ox.variable_queries():
        if metric and ox.metric_names(metric) - exported:
            unknown[where] = sorted(ox.metric_names(metric) - exported)
    assert not unknown, f"metrics not exported by the code: {unknown}"


def test_every_ldawt_metric_is_on_a_dashboard_or_in_a_rule() -> None:
    used = set().union(*(ox.metric_names(expr) for _, expr in ox.all_exprs()))
    missing = []
    for registry in (daemon_metrics.REGISTRY, manager_metrics.REGISTRY):
        for family in registry.collect():
            if family.name.startswith("ldawt_"):
                samples = {s.name for s in family.samples if not s.name.endswith("_created")}
                samples |= {family.name + suffix for suffix in ("", "_total", "_bucket")}
                if not samples & used:
                    missing.append(family.name)
    assert not missing, f"exported but shown nowhere: {missing}"


def test_dashboards_have_fixed_uids_and_use_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(
        (ox.GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]
    uids = set()
    for path in ox.DASHBOARDS:
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == datasource["uid"]
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert uids == DASHBOARD_UIDS
    provider = yaml.safe_load(
        (ox.GRAFANA / "provisioning" / "dashboards" / "ldawt.yaml").read_text()
    )["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


def test_dashboards_cover_the_issue() -> None:
    titles = {where.split(": ", 1)[1].rsplit(" [", 1)[0] for where, _ in ox.dashboard_exprs()}
    for wanted in (
        "Images per second",
        "Download bytes per second",
        "Success ratio",
        "Failures by status",
        "Shards done / planned",
        "ETA",
        "Workers up (scraped)",
        "Request duration quantiles",
        "Requests in flight",
        "Connection pool reuse",
        "CPU",
        "Resident memory",
        "Open file descriptors",
        "Workspace disk free",
        "Rate-limit wait (seconds waited per second)",
        "HTTP 429 by host",
        "HTTP 5xx by host",
        "Hosts paused",
        "Concurrency limit by host (lowest first)",
        "Pauses and limit halvings by host",
    ):
        assert wanted in titles
