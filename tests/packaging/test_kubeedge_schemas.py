"""Every manifest in packaging/kubeedge validates against the schema of its kind.

KubeEdge's kinds (Device, DeviceModel, Rule, RuleEndpoint) against our written-out subset of
the v1.23 CRDs (schemas/kubeedge-v1.23.yaml, which says which upstream files it follows);
Kubernetes' own kinds against the real Kubernetes 1.32 JSON schemas (the release KubeEdge
v1.23 builds on) that the kubernetes-validate package ships, in its strict flavour (unknown
fields refused). Both run offline. Broken copies of the manifests show each check can fail.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.packaging.test_kubeedge_manifests import DOCS, pod_spec, the

CRD_SCHEMAS = yaml.safe_load(
    (Path(__file__).parent / "schemas" / "kubeedge-v1.23.yaml").read_text()
)
KUBERNETES = "1.32"  # k8s.io/api v0.32 in KubeEdge v1.23.1's go.mod
CRD_DOCS = [d for d in DOCS if d["kind"] in CRD_SCHEMAS["kinds"]]
CORE_DOCS = [d for d in DOCS if d["kind"] not in CRD_SCHEMAS["kinds"]]
Doc = dict[str, Any]


def doc_id(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def crd_errors(doc: Doc) -> list[str]:
    """Every violation of the CRD schema, as '<path>: <message>'."""
    validator = jsonschema.Draft202012Validator(CRD_SCHEMAS["kinds"][doc["kind"]])
    return sorted(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    )


def core_error(doc: Doc) -> str:
    """'' if Kubernetes' strict schema accepts ``doc``, else the first violation."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.absolute_path))}: {exc.message}"
    return ""


def test_the_crd_schemas_are_valid_json_schema_and_cover_every_custom_kind() -> None:
    for schema in CRD_SCHEMAS["kinds"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert {d["kind"] for d in CRD_DOCS} == set(CRD_SCHEMAS["kinds"])
    assert {d["apiVersion"] for d in CORE_DOCS} <= {"v1", "apps/v1", "networking.k8s.io/v1"}


@pytest.mark.parametrize("doc", CRD_DOCS, ids=doc_id)
def test_kubeedge_manifests_validate_against_the_crd_schemas(doc: Doc) -> None:
    assert crd_errors(doc) == []


@pytest.mark.parametrize("doc", CORE_DOCS, ids=doc_id)
def test_kubernetes_manifests_validate_against_the_strict_kubernetes_schemas(doc: Doc) -> None:
    assert core_error(doc) == ""


NEWER_THAN_V1_20 = {
    "Device": {
        ("spec", "stateReport"),
        ("spec", "properties", "*", "pushMethod", "anomalyDetection"),
    },
    "DeviceModel": {("spec", "protocolConfigData"), ("spec", "properties", "*", "visitors")},
}
"""Fields of the v1.23 CRDs that v1.20.0's lack (git diff v1.20.0 v1.23.1 -- build/crds/devices)."""


def field_paths(node: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every field path in a document, list items as '*'."""
    if isinstance(node, dict):
        return {path} | {p for k, v in node.items() for p in field_paths(v, (*path, k))}
    if isinstance(node, list):
        return {path} | {p for item in node for p in field_paths(item, (*path, "*"))}
    return {path}


@pytest.mark.parametrize("doc", CRD_DOCS, ids=doc_id)
def test_device_manifests_use_no_field_newer_than_kubeedge_1_20(doc: Doc) -> None:
    """docs/kubeedge.md promises that v1.20-v1.22 accept the Device and DeviceModel too."""
    assert not field_paths(doc) & NEWER_THAN_V1_20.get(doc["kind"], set())


def _parent(doc: Doc, path: str) -> tuple[Any, Any]:
    """The node holding a dotted path's last step (list indices as numbers), and that step."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for key in parents:
        node = node[key]
    return node, last


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node, last = _parent(doc, path)
        node[last] = value

    return change


def _drop(path: str) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node, last = _parent(doc, path)
        del node[last]

    return change


BROKEN_CRDS = [
    ("Device", _drop("spec.properties.0.desired.value"), "'value' is a required property"),
    ("Device", _set("spec.deviceModelRefs", {"name": "x"}), "'deviceModelRefs' was unexpected"),
    ("Device", _set("spec.properties.6.reportCycle", "10s"), "'10s' is not of type 'integer'"),
    ("Device", _set("spec.properties.0.desired.value", 25), "25 is not of type 'string'"),
    ("Device", _set("metadata.name", "Edge_Node_1"), "does not match"),
    ("DeviceModel", _set("spec.properties.0.type", "INTEGER"), "'INTEGER' is not one of"),
    ("DeviceModel", _set("spec.properties.0.accessMode", "RW"), "'RW' is not one of"),
    ("DeviceModel", _set("spec.properties.0.minimum", 1), "1 is not of type 'string'"),
    ("DeviceModel", _set("apiVersion", "devices.kubeedge.io/v1alpha2"), "was expected"),
    ("Rule", _drop("spec.target"), "'target' is a required property"),
    ("Rule", _set("spec.sourceResource.node_name", 1), "1 is not of type 'string'"),
    ("RuleEndpoint", _set("spec.ruleEndpointType", "mqtt"), "'mqtt' is not one of"),
    ("RuleEndpoint", _drop("spec.ruleEndpointType"), "'ruleEndpointType' is a required"),
]


@pytest.mark.parametrize(
    ("kind", "change", "cause"), BROKEN_CRDS, ids=[f"{k}-{c}" for k, _, c in BROKEN_CRDS]
)
def test_a_broken_kubeedge_manifest_fails_with_its_field_named(
    kind: str, change: Callable[[Doc], None], cause: str
) -> None:
    doc = copy.deepcopy(next(d for d in CRD_DOCS if d["kind"] == kind))
    assert crd_errors(doc) == []
    change(doc)
    (error,) = crd_errors(doc)
    assert cause in error, error


def _edged_container(change: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def in_container(doc: Doc) -> None:
        change(pod_spec(doc)["containers"][0])

    return in_container


BROKEN_CORE = [
    (("DaemonSet", "edged"), _set("spec.replica", 1), "'replica' was unexpected"),
    (
        ("DaemonSet", "edged"),
        _edged_container(_set("securityContext.runAsUser", "root")),
        "'root' is not of type 'integer'",
    ),
    (
        ("DaemonSet", "edged"),
        _edged_container(_set("livenessProbe.httpGet.paht", "/healthz")),
        "'paht' was unexpected",
    ),
    (("Service", "serverd"), _set("spec.ports.0.port", "eighty"), "is not of type 'integer'"),
    (("ConfigMap", "edged-config"), _set("data", {"edged.yaml": 1}), "is not of type 'string'"),
]


@pytest.mark.parametrize(
    ("which", "change", "cause"), BROKEN_CORE, ids=[f"{w[1]}-{c}" for w, _, c in BROKEN_CORE]
)
def test_a_broken_kubernetes_manifest_fails(
    which: tuple[str, str], change: Callable[[Doc], None], cause: str
) -> None:
    doc = copy.deepcopy(the(*which))
    assert core_error(doc) == ""
    change(doc)
    assert cause in core_error(doc)
