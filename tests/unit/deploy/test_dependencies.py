"""The dependencies' Helm values parse, agree with our manifests, and the dashboard's queries
name metrics the services really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from avatar_shared import semconv

ROOT = Path(__file__).resolve().parents[3]
DEPS = ROOT / "deploy" / "k8s" / "dependencies"


def _common() -> dict[str, str]:
    """The avatar-common ConfigMap of the base: what every service is told."""
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "shared.yaml").read_text())
    (common,) = [d for d in docs if d["metadata"]["name"] == "avatar-common"]
    return dict(common["data"])


@pytest.mark.parametrize("values", sorted(p.name for p in DEPS.glob("*-values.yaml")))
def test_values_files_are_yaml_mappings(values: str) -> None:
    assert isinstance(yaml.safe_load((DEPS / values).read_text()), dict)


def test_nats_is_a_three_node_jetstream_cluster_matching_our_stream_replicas() -> None:
    values = yaml.safe_load((DEPS / "nats-values.yaml").read_text())
    cluster = values["config"]["cluster"]
    assert (cluster["enabled"], cluster["replicas"]) == (True, 3)
    assert values["config"]["jetstream"]["enabled"] is True
    assert _common()["NATS_STREAM_REPLICAS"] == "3"


def test_the_collector_receives_what_the_services_send() -> None:
    values = yaml.safe_load((DEPS / "otel-collector-values.yaml").read_text())
    assert values["config"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    endpoint = _common()["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.startswith(f"http://{values['fullnameOverride']}.observability.")
    assert endpoint.endswith(":4318")


def _prometheus_names() -> set[str]:
    names = set()
    for attr in dir(semconv):
        if attr.startswith("METRIC_"):
            base = getattr(semconv, attr).replace(".", "_")
            names |= {f"{base}_total", f"{base}_seconds_bucket", base}
    return names


def test_every_dashboard_query_names_a_metric_we_export() -> None:
    dashboard = json.loads((DEPS / "dashboards" / "avatar-backend.json").read_text())
    exported = _prometheus_names()
    kinds = set()
    checked = 0
    for panel in dashboard["panels"]:
        kinds.add(panel["datasource"]["uid"])
        for target in panel["targets"]:
            if panel["datasource"]["uid"] != "prometheus":
                continue
            for metric in re.findall(r"\b((?:avatar|nats)_[a-z_]+)\s*[\[{]", target["expr"]):
                assert metric.startswith("nats_") or metric in exported, metric
                checked += 1
    assert checked >= 10
    assert kinds == {"tempo", "prometheus"}  # the turn as a trace, the actions as metrics


def test_sampling_keeps_every_drop_and_whole_conversations_without_buffering() -> None:
    from avatar_shared import semconv
    from avatar_shared.events import Outcome

    config = yaml.safe_load((DEPS / "otel-collector-values.yaml").read_text())["config"]
    assert "tail_sampling" not in config["processors"]  # no conversation held in memory
    keep = config["processors"]["filter/what_went_wrong"]["traces"]["span"]
    # the filter drops what matches: everything but errors and dropped gestures
    assert keep == [
        f'status.code != STATUS_CODE_ERROR and attributes["{semconv.OUTCOME}"] != '
        f'"{Outcome.DROPPED.value}"'
    ]
    pipelines = config["service"]["pipelines"]
    traces = {name: p for name, p in pipelines.items() if name.startswith("traces")}
    assert {tuple(p["exporters"]) for p in traces.values()} == {("otlp/tempo",)}
    processors = {proc for p in traces.values() for proc in p["processors"]}
    assert {"probabilistic_sampler/conversations", "filter/what_went_wrong"} <= processors
