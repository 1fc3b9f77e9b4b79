"""The FineTune CRD: generated from the pydantic models and committed current, a valid
apiextensions.k8s.io/v1 object with a structural schema, accepted by kubectl and the fake API
server, and every example spec's CR fits it without a field being pruned."""
from __future__ import annotations

import json
import os
import subprocess

import kubernetes_validate
import yaml

from cluster_helpers import CHART, example_specs
from controller.backends.kubernetes_crd import (
    CRD_FILE, crd, crd_yaml, desired_cr, status_to_cr, structural, structural_problems,
)
from controller.spec.finetune import FineTune
from controller.status import Condition, SpecStatus, summarize
from crdschema import errors

K8S_VERSION = "1.30"


def test_committed_crd_is_current():
    assert CRD_FILE == CHART / "crds" / "finetunes.ftops.dev.yaml"
    assert CRD_FILE.read_text() == crd_yaml(), (
        "charts/ftops/crds/finetunes.ftops.dev.yaml is stale: run `python -m controller.backends.kubernetes_crd`")


def test_crd_is_a_valid_apiextensions_v1_object():
    committed = yaml.safe_load(CRD_FILE.read_text())
    kubernetes_validate.validate(committed, K8S_VERSION, strict=True)
    version = committed["spec"]["versions"][0]
    assert committed["spec"]["scope"] == "Namespaced" and version["subresources"] == {"status": {}}
    assert version["served"] and version["storage"]
    assert structural_problems(version["schema"]["openAPIV3Schema"]) == []
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert set(columns) >= {"Phase", "Run", "Gate", "Deployed", "Age"}


def test_the_structural_checker_rejects_a_raw_pydantic_schema():
    """Converting is necessary, and the checker would notice if it stopped being done."""
    raw = FineTune.model_json_schema(by_alias=True)
    problems = structural_problems(raw["$defs"]["FineTuneSpec"])
    assert any("$ref" in p or "no type" in p for p in problems)
    assert any("additionalProperties: false" in p for p in problems)
    bad = {"type": "object", "properties": {"x": {"anyOf": [{"type": "string", "description": "d"}]}}}
    assert structural_problems(bad) == [".x: no type", ".x.anyOf[0]: ['description', 'type'] not allowed inside a junctor"]


def test_conversion_keeps_validations_in_the_kubernetes_dialect():
    defs = {"S": {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}},
                  "additionalProperties": False}}
    out = structural({"anyOf": [{"$ref": "#/$defs/S"}, {"type": "null"}], "default": None, "description": "d"}, defs)
    assert out == {"type": "object", "nullable": True, "description": "d",
                   "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}}
    assert structural({"const": "x", "type": "string", "default": "x", "title": "T"}, {}) == {
        "enum": ["x"], "type": "string", "description": 'Default: "x".'}


def test_every_example_spec_fits_the_crd_without_pruning():
    schema_crd = crd()
    for ft in example_specs():
        cr = desired_cr(ft, "ftops-" + ft.metadata.owner)
        assert errors(schema_crd, cr) == [], ft.name
        full = dict(cr, spec=ft.spec.model_dump(by_alias=True, mode="json", exclude_none=True))
        assert errors(schema_crd, full) == [], ft.name  # with every default filled in, too


def test_a_cr_that_breaks_the_schema_is_rejected_by_it():
    ft = example_specs()[0]
    cr = desired_cr(ft, "ftops-x")
    cr["spec"]["method"]["type"] = "prompting"
    cr["spec"]["surprise"] = 1
    found = errors(crd(), cr)
    assert any("prompting" in e for e in found) and any("surprise" in e for e in found)


def test_status_fits_the_crd():
    conds = summarize((Condition("DataReady", "True", "Succeeded", "", "abc"),
                       Condition("Trained", "False", "Running", "step 10", "abc")), True, "abc")
    status = status_to_cr(SpecStatus("x", conds, "abc", "run1", None, "training"), 3)
    ft = example_specs()[0]
    cr = dict(desired_cr(ft, "ns"), status=status)
    assert errors(crd(), cr) == []


def test_kubectl_applies_the_crd_and_the_server_serves_finetunes(fake_kube, kubectl, tmp_path):
    base = [kubectl, "--server", fake_kube.url, "--token", "t", "--kubeconfig", os.devnull]
    out = subprocess.run(base + ["apply", "-f", str(CRD_FILE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "customresourcedefinition.apiextensions.k8s.io/finetunes.ftops.dev created" in out.stdout
    fake_kube.ensure_namespace("ftops-team-a")
    ft = example_specs()[0]
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(desired_cr(ft, "ftops-team-a")))
    out = subprocess.run(base + ["apply", "-f", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"finetune.ftops.dev/{ft.name} created" in out.stdout
    got = subprocess.run(base + ["get", "ft", "-n", "ftops-team-a", "-o", "json"], capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stderr
    assert [i["metadata"]["name"] for i in json.loads(got.stdout)["items"]] == [ft.name]
