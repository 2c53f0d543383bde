"""deploy/: the alert rules and Prometheus config pass promtool, the dashboard's queries parse,
and every metric either of them uses is declared on /metrics.

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
DASHBOARD = ROOT / "deploy" / "grafana" / "backtor-dashboard.json"
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


def alert_expressions() -> list[str]:
    """The `expr:` values of the rules file (a block scalar runs while it is indented more)."""
    expressions: list[str] = []
    indent: int | None = None
    for line in (PROMETHEUS / "alerts.yml").read_text().splitlines():
        depth = len(line) - len(line.lstrip())
        if indent is not None and line.strip() and depth > indent:
            expressions[-1] += "\n" + line.strip()
            continue
        indent = None
        if line.strip().startswith("expr:"):
            indent = depth
            expressions.append(line.strip().removeprefix("expr:").strip(" |"))
    return expressions


def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yml")
    assert len(alert_expressions()) == 7


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_the_prometheus_config_is_valid() -> None:
    promtool("check", "config", "prometheus.yml")


def test_the_dashboard_is_json_and_its_queries_are_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
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


def test_every_metric_the_rules_and_dashboard_use_is_on_metrics(sqlite_url: str) -> None:
    upgrade_to_head(sqlite_url)
    settings = Settings.from_env(
        {"DATABASE_URL": sqlite_url, "CONDUCTOR_API_URL": "http://127.0.0.1:9/api"}
    )
    with TestClient(create_app(settings)) as client:
        declared = declared_names(client.get("/metrics").text)
    dashboard = json.loads(DASHBOARD.read_text())
    used_by_dashboard = {m for q in dashboard_queries(dashboard) for m in METRIC.findall(q)}
    used_by_rules = {m for expr in alert_expressions() for m in METRIC.findall(expr)}
    assert used_by_dashboard and used_by_rules
    assert used_by_dashboard - declared == set()
    assert used_by_rules - declared == set()
