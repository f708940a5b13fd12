"""The monitoring files agree with each other and with the code: the Grafana dashboard is
well formed, Prometheus scrapes the ports the worker and the collector listen on, and
compose runs both with the repository's files. (That every metric the dashboard queries
is exposed is checked against real scrapes: tests/integration/test_monitoring.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARD_FILE = MONITORING / "grafana" / "dashboards" / "sieve.json"
PROMETHEUS_FILE = MONITORING / "prometheus" / "prometheus.yml"
PROVISIONING = MONITORING / "grafana" / "provisioning"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")["services"]
    return services


def test_the_dashboard_is_a_grafana_dashboard_with_panels_that_query_prometheus() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    queried = [p for p in panels if p["type"] != "row"]
    assert len(queried) >= 10
    for panel in queried:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert _balanced(target["expr"]), target["expr"]
    # Every job variable lists the jobs that expose a metric of Sieve's.
    for name in ("worker_job", "collector_job"):
        assert re.fullmatch(r"label_values\(sieve_\w+, job\)", variables[name]["definition"])


def test_the_dashboard_layout_fits_24_columns_without_overlaps() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    exprs = " ".join(
        t["expr"] for p in dashboard()["panels"] if p["type"] != "row" for t in p["targets"]
    )
    for wanted in (
        "rate(sieve_raw_records_total",  # throughput
        "sum by (reason) (rate(sieve_dead_lettered_total",  # dead letters by reason
        "sieve_consumer_lag",  # lag in records
        "histogram_quantile(0.95, sum by (le) (rate(sieve_end_to_end_lag_seconds_bucket",
        "sieve_batch_processing_seconds_bucket",
        "sieve_range_write_seconds_bucket",
        "sum by (status) (rate(sieve_collector_requests_total",  # collector status codes
        "sieve_collector_request_seconds_bucket",
    ):
        assert wanted in exprs, wanted


def test_prometheus_scrapes_the_ports_the_worker_and_the_collector_listen_on() -> None:
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]}
    defaults = Settings()
    worker = jobs["sieve-worker"]["dns_sd_configs"][0]
    collector = jobs["sieve-collector"]["dns_sd_configs"][0]
    assert worker["port"] == defaults.metrics_port
    assert collector["port"] == defaults.collector_metrics_port
    services = compose_services()
    assert worker["names"] == ["worker"] and "worker" in services
    assert collector["names"] == ["collector"] and "collector" in services


def test_compose_binds_metrics_where_prometheus_can_reach_them() -> None:
    services = compose_services()
    for name, variable in (
        ("worker", "SIEVE_METRICS_HOST"),
        ("collector", "SIEVE_COLLECTOR_METRICS_HOST"),
    ):
        assert services[name]["environment"][variable] == "0.0.0.0"
    # No metrics port is published to the host: only the compose network reaches them.
    published = " ".join(str(p) for p in services["collector"].get("ports", []))
    assert str(Settings().collector_metrics_port) not in published
    assert "ports" not in services["worker"]


def test_compose_runs_prometheus_and_grafana_with_the_repositorys_files() -> None:
    services = compose_services()
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    mounts = {
        source: target
        for service in (prometheus, grafana)
        for source, target, *_ in (volume.split(":") for volume in service["volumes"])
        if source.startswith("./")
    }
    for source in mounts:
        assert (ROOT / source).exists(), source
    assert mounts["./monitoring/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    # The dashboards provider reads the folder the dashboards are mounted at.
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "sieve.yml")["providers"]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    # The data source is the compose prometheus service, on the port it listens on.
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert any(str(p).endswith(":9090") for p in prometheus["ports"])
    # Both published on the loopback interface only.
    for service in (prometheus, grafana):
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])


def _balanced(expr: str) -> bool:
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return not stack
