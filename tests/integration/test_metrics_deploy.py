"""deploy/: the alert rules and Prometheus config pass promtool, the dashboard's queries parse,
and every metric either of them uses is declared on /metrics: alerts.yml and the dashboard
on the per-spec /metrics, alerts-aggregated.yml on the aggregated one (BACKTOR_METRICS_MODE).

promtool comes from scripts/test-tools (Debian's prometheus package).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backtor.api.app import create_app
from backtor.db.migrate import upgrade_to_head
from backtor.runtime.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PER_SPEC_RULES = PROMETHEUS / "alerts.yml"
AGGREGATED_RULES = PROMETHEUS / "alerts-aggregated.yml"
# The rules that read no per-spec series: the same in both files.
COMMON_RULES = (
    "BacktorSchedulerNotTicking",
    "BacktorConductorUnreachable",
    "BacktorDatabaseUnreachable",
)
DASHBOARD = ROOT / "deploy" / "grafana" / "backtor-dashboard.json"
FLEET_DASHBOARD = ROOT / "deploy" / "grafana" / "backtor-fleet-dashboard.json"
METRIC = re.compile(r"\bbacktor_[a-z_]+\b")
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: run scripts/test-tools (Debian's prometheus package)"
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def declared_names(exposition: str) -> set[str]:
    """Every sample name /metrics may carry, from its `# TYPE` lines (even without samples)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [
        str(target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(str(variable["definition"]))
    return queries


def alert_expressions(rules: Path = PER_SPEC_RULES) -> list[str]:
    """The `expr:` values of a rules file (a block scalar runs while it is indented more)."""
    expressions: list[str] = []
    indent: int | None = None
    for line in rules.read_text().splitlines():
        depth = len(line) - len(line.lstrip())
        if indent is not None and line.strip() and depth > indent:
            expressions[-1] += "\n" + line.strip()
            continue
        indent = None
        if line.strip().startswith("expr:"):
            indent = depth
            expressions.append(line.strip().removeprefix("expr:").strip(" |"))
    return expressions


def rule_blocks(rules: Path) -> dict[str, str]:
    """Each alert's text, from its `- alert:` line to the next rule (comments left out)."""
    blocks: dict[str, str] = {}
    name: str | None = None
    for line in rules.read_text().splitlines():
        found = re.match(r"\s*- alert: (\w+)", line)
        if found:
            name = found.group(1)
            blocks[name] = ""
        if name is not None and not line.strip().startswith("#"):
            blocks[name] += line.rstrip() + "\n"
    return {alert: text.strip() for alert, text in blocks.items()}


def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", "alerts.yml")
    assert len(alert_expressions()) == 8
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", "alerts-aggregated.yml")
    assert len(alert_expressions(AGGREGATED_RULES)) == 8


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_aggregated_alert_rules_fire_as_their_unit_tests_expect() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts-aggregated.test.yml")


def test_each_mode_has_the_same_alerts_and_shares_the_rest_verbatim() -> None:
    """Routes and silences by alert name work in either mode; the common rules never drift."""
    per_spec, aggregated = rule_blocks(PER_SPEC_RULES), rule_blocks(AGGREGATED_RULES)
    guards = {"BacktorAlertRulesNeedPerSpecMetrics", "BacktorAlertRulesNeedAggregatedMetrics"}
    assert set(per_spec) - guards == set(aggregated) - guards
    for alert in COMMON_RULES:
        assert per_spec[alert] == aggregated[alert], alert
    # The aggregated rules read no per-spec series, and raise no alert per spec.
    text = AGGREGATED_RULES.read_text()
    assert "by (backup)" not in text and "$labels.backup" not in text


def test_the_prometheus_config_is_valid() -> None:
    promtool("check", "config", "prometheus.yml")


@pytest.mark.parametrize("file", [DASHBOARD, FLEET_DASHBOARD], ids=["per-spec", "aggregated"])
def test_the_dashboard_is_json_and_its_queries_are_promql(tmp_path: Path, file: Path) -> None:
    dashboard = json.loads(file.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # promtool parses PromQL in recording rules: one rule per query, Grafana's variables
    # replaced by what Grafana would put there.
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": query.replace("$__rate_interval", "5m").replace("$backup", ".*"),
        }
        for i, query in enumerate(dashboard_queries(dashboard))
        if not query.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool(
        "check", "rules", str(path), cwd=tmp_path
    )


def scrape(database_url: str, mode: str) -> str:
    """The API's /metrics in `mode`, on a database with a spec and a counted trigger."""
    upgrade_to_head(database_url)
    settings = Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "CONDUCTOR_API_URL": "http://127.0.0.1:9/api",
            "BACKTOR_METRICS_MODE": mode,
        }
    )
    with TestClient(create_app(settings)) as client:
        body = {"name": "nightly", "backupCronString": "0 0 3 * * *"}
        client.post("/backup", json=body)  # 201, or 409 on the second scrape
        client.post("/backup/nightly/materialized")  # 503: counted as a trigger error
        return client.get("/metrics").text


def test_every_metric_the_rules_and_dashboard_use_is_on_metrics(sqlite_url: str) -> None:
    declared = declared_names(scrape(sqlite_url, "per-spec"))
    declared_aggregated = declared_names(scrape(sqlite_url, "aggregated"))
    dashboard = json.loads(DASHBOARD.read_text())
    used_by_dashboard = {m for q in dashboard_queries(dashboard) for m in METRIC.findall(q)}
    fleet_dashboard = json.loads(FLEET_DASHBOARD.read_text())
    used_by_fleet = {m for q in dashboard_queries(fleet_dashboard) for m in METRIC.findall(q)}
    used_by_rules = {m for expr in alert_expressions() for m in METRIC.findall(expr)}
    used_by_aggregated = {
        m for expr in alert_expressions(AGGREGATED_RULES) for m in METRIC.findall(expr)
    }
    assert used_by_dashboard and used_by_rules and used_by_aggregated and used_by_fleet
    assert used_by_fleet - declared_aggregated == set()
    assert used_by_dashboard - declared == set()
    assert used_by_rules - declared == set()
    assert used_by_aggregated - declared_aggregated == set()


@pytest.mark.parametrize("mode", ["per-spec", "aggregated"])
def test_metrics_follow_prometheus_naming_conventions(sqlite_url: str, mode: str) -> None:
    """`promtool check metrics` lints names, suffixes and units of both modes' answers."""
    exposition = scrape(sqlite_url, mode)
    assert 'backup="nightly"' in exposition if mode == "per-spec" else "backup=" not in exposition
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: run scripts/test-tools (Debian's prometheus package)"
    done = subprocess.run(
        [tool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
