"""The Kubernetes manifests in deploy/ are valid resources (kubernetes-validate's bundled schemas,
strict: an unknown or misspelt field fails), and they run the worker the way docs/scale-out.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).parents[2] / "deploy"
KUBERNETES = "1.33.0"


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


@pytest.mark.parametrize("name,doc", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_a_valid_kubernetes_resource(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_misspelt_field_is_caught():
    deployment = next(doc for _, doc in documents() if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_workers_are_a_deployment_with_probes_and_a_grace_period_longer_than_the_drain():
    docs = {doc["kind"]: doc for _, doc in documents()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["args"][0] == "worker"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
    fleet = yaml.safe_load(docs["ConfigMap"]["data"]["fleet.yaml"])
    assert pod["terminationGracePeriodSeconds"] > fleet["shutdown_timeout"]
    assert fleet["redis"]["url"].startswith("redis://segstream-redis:")
    from segstream.pipeline.config import parse_config

    parse_config(fleet)  # the config the pods read is a valid segstream config
