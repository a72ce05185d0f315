"""collector-config/: every pipeline names defined components; spans sent through a real OTLP
collector (PyPI ``rotel``) reach a real ``tasktree serve`` intact."""

from __future__ import annotations

import subprocess
from pathlib import Path

import obs_support as obs
import obs_workload as wl
import pytest
import yaml

CONFIGS = sorted((obs.ROOT / "collector-config").glob("*.yaml"))
KINDS = ("receivers", "processors", "exporters", "connectors")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_pipeline_names_defined_components(path: Path):
    config = yaml.safe_load(path.read_text())
    service = config["service"]
    for name in service.get("extensions", []):
        assert name in config.get("extensions", {}), f"extension {name} is not defined"
    assert service["pipelines"], "no pipelines"
    used = set()
    for pipeline_name, pipeline in service["pipelines"].items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), pipeline_name
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                defined = config.get(kind, {}) | config.get("connectors", {})
                assert name in defined, f"{pipeline_name}: {kind[:-1]} {name} is not defined"
                used.add((kind, name))
    for kind in ("receivers", "processors", "exporters"):
        for name in config.get(kind, {}):
            assert (kind, name) in used, f"{kind[:-1]} {name} is defined but in no pipeline"
    # what the issue asks of every variant
    traces = service["pipelines"]["traces"]
    assert traces["processors"][0] == "memory_limiter" and "batch" in traces["processors"]
    [exporter] = traces["exporters"]
    settings = config["exporters"][exporter]
    assert settings["retry_on_failure"]["enabled"] is True
    queue = settings["sending_queue"]
    assert queue["enabled"] is True and queue["storage"] in config["extensions"]
    assert config["extensions"][queue["storage"]]["directory"]


def test_the_load_balancing_variant_routes_by_trace_id():
    config = yaml.safe_load(
        (obs.ROOT / "collector-config" / "otelcol-loadbalancing.yaml").read_text()
    )
    [exporter] = config["service"]["pipelines"]["traces"]["exporters"]
    settings = config["exporters"][exporter]
    assert exporter.split("/")[0] in ("loadbalancing", "load_balancing")
    assert settings["routing_key"] == "traceID" and "otlp" in settings["protocol"]
    assert set(settings["resolver"]) & {"dns", "static", "k8s"}


def test_spans_sent_through_a_real_collector_reach_tasktree_intact(
    rotel_agent, tasktree_server, tmp_path
):
    grpc_port, http_port = obs.free_port(), obs.free_port()
    log = open(tmp_path / "rotel.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen(
        [
            rotel_agent,
            "start",
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{grpc_port}",
            "--otlp-http-endpoint",
            f"127.0.0.1:{http_port}",
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            f"http://{tasktree_server.otlp_grpc}",
            "--otlp-exporter-protocol",
            "grpc",
            "--batch-timeout",
            "200ms",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        obs.wait_until(lambda: _listening(http_port), 30, "rotel to listen")
        trace_id = wl.send_run(
            f"http://127.0.0.1:{http_port}/v1/traces", "via-collector", fail=True
        )
        run = obs.wait_until(
            lambda: _run(tasktree_server, trace_id), 30, "the run to reach tasktree"
        )
        assert (run["job"], run["name"], run["status"], run["task_count"]) == (
            "via-collector",
            "via-collector-run",
            "error",
            9,
        )
        assert run["counts"] == {"ok": 7, "error": 2, "running": 0, "stalled": 0}  # root included
        [root] = run["roots"]
        children = tasktree_server.get(f"/api/runs/{trace_id}/tasks/{root['span_id']}/children")[
            "children"
        ]
        assert [c["name"] for c in children] == ["extract", "transform"]
        chunks = tasktree_server.get(
            f"/api/runs/{trace_id}/tasks/{children[1]['span_id']}/children"
        )["children"]
        failed = tasktree_server.get(f"/api/runs/{trace_id}/tasks/{chunks[1]['span_id']}")
        assert (failed["status"], failed["status_message"], failed["attributes"]["chunk"]) == (
            "error",
            "chunk 1: bad record",
            1,
        )
        assert failed["resource"]["host.name"] == "worker-b"
        assert failed["resource"]["service.name"] == "via-collector"
        [event] = failed["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.message"] == "bad record in chunk 1"
    finally:
        obs.stop_process(agent)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(server, trace_id: str):
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server.web}/api/runs/{trace_id}", timeout=10) as resp:
            run = json.loads(resp.read())
    except urllib.error.HTTPError:
        return None
    return run if run["task_count"] == 9 and run["status"] != "running" else None
