"""Argo CD and Flux read FineTune health the way we mean: deploy/argocd/health.lua run in Lua 5.1
(Argo CD's gopher-lua dialect) through lupa, with Argo CD's own test-case format, on inputs made
from the controller's real status shapes; the argocd-cm snippet carries the same script; the
Flux healthCheckExprs name only conditions and reasons that exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cluster_helpers import ROOT, example_specs
from controller.backends.kubernetes_crd import desired_cr, status_to_cr
from controller.status import Condition, Reason, SpecStatus, summarize

FLUX_TO_ARGO = {"InProgress": "Progressing", "Failed": "Degraded", "Current": "Healthy"}

ARGO = ROOT / "deploy" / "argocd"
FLUX = ROOT / "deploy" / "flux"
SCRIPT = (ARGO / "health.lua").read_text()


def lua_health(obj: dict) -> dict:
    """Run the health script as Argo CD does: a fresh state, `obj` global, no os/io/require."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    g = lua.globals()
    for name in ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "debug", "package"):
        g[name] = None
    g.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


CASES = yaml.safe_load((ARGO / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_argo_cd_health_cases(case):
    obj = yaml.safe_load((ARGO / case["inputPath"]).read_text())
    assert lua_health(obj) == case["healthStatus"]


def test_every_health_status_is_covered():
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}


def cr_with(status: SpecStatus, generation: int = 1) -> dict:
    cr = desired_cr(example_specs()[0], "ftops-x")
    cr["metadata"]["generation"] = generation
    cr["status"] = status_to_cr(status, generation)
    return cr


def test_on_the_status_the_controller_writes():
    rev = "4b1c0de"
    steps = ("DataReady", "Trained", "Evaluated", "GatePassed", "Deployed")
    done = tuple(Condition(t, "True", Reason.SUCCEEDED, "", rev) for t in steps)
    ready = SpecStatus("x", summarize(done, True, rev), rev, "run2", "run2")
    assert lua_health(cr_with(ready)) == {"status": "Healthy", "message": "every step is done"}

    running = summarize((done[0], Condition("Trained", "False", Reason.RUNNING, "step 3/10", rev)), True, rev)
    assert lua_health(cr_with(SpecStatus("x", running, rev, "run2"))) == {
        "status": "Progressing", "message": "Trained Running: step 3/10"}

    gate = summarize(done[:3] + (Condition("GatePassed", "False", Reason.GATE_FAILED, "f1 0.70 < 0.80", rev),), True, rev)
    assert lua_health(cr_with(SpecStatus("x", gate, rev, "run2", "run1"))) == {
        "status": "Degraded", "message": "GatePassed GateFailed: f1 0.70 < 0.80"}

    stalled = gate + (Condition("Stalled", "True", Reason.SPEC_INVALID, "bad spec", rev),)
    assert lua_health(cr_with(SpecStatus("x", stalled, rev)))["status"] == "Degraded"
    # an edit to the CR bumped the generation; until the controller has seen it, it is not Healthy
    stale = cr_with(ready)
    stale["metadata"]["generation"] = 2
    assert lua_health(stale)["status"] == "Progressing"


def test_the_argocd_cm_snippet_carries_the_same_script():
    cm = yaml.safe_load((ARGO / "argocd-cm.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"]["resource.customizations.health.ftops.dev_FineTune"] == SCRIPT


def test_flux_health_check_exprs_use_real_conditions_and_reasons():
    docs = list(yaml.safe_load_all((FLUX / "kustomization.yaml").read_text()))
    (ks,) = [d for d in docs if d["kind"] == "Kustomization"]
    (expr,) = ks["spec"]["healthCheckExprs"]
    assert (expr["apiVersion"], expr["kind"]) == ("ftops.dev/v1alpha1", "FineTune")
    assert set(expr) >= {"inProgress", "failed", "current"}
    text = " ".join(expr[k] for k in ("inProgress", "failed", "current"))
    known_types = {"DataReady", "Trained", "Evaluated", "GatePassed", "Deployed", "Ready", "Stalled"}
    known_reasons = {v for k, v in vars(Reason).items() if k.isupper()}
    assert set(re.findall(r"c\.type == '(\w+)'", text)) <= known_types
    listed = re.findall(r"'(\w+)'", expr["failed"].split(" in ", 1)[1])
    assert listed and set(listed) <= known_reasons
    # Argo CD and Flux agree on which reasons mean "failed for good"
    argo = set(re.findall(r"(\w+) = true", SCRIPT))
    assert argo == set(listed)
    for hc in ks["spec"]["healthChecks"]:
        assert hc["kind"] == "FineTune" and hc["name"] in {ft.name for ft in example_specs()}


def flux_health(expr: dict, obj: dict) -> str:
    """kustomize-controller's order: inProgress, then failed, then current; none: InProgress.
    An expression that cannot be evaluated (a field missing) means "keep waiting"."""
    import cel

    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        try:
            if cel.evaluate(expr[key], obj) is True:
                return verdict
        except Exception:  # noqa: BLE001 - Flux waits on an evaluation error
            return "InProgress"
    return "InProgress"


def test_flux_expressions_evaluate_like_the_argo_cd_script():
    """The CEL expressions, evaluated with a CEL implementation, give the same health as the Lua
    script on every Argo CD test input and on the controller's own status shapes."""
    ks = yaml.safe_load((FLUX / "kustomization.yaml").read_text())
    (expr,) = ks["spec"]["healthCheckExprs"]
    objs = [yaml.safe_load((ARGO / c["inputPath"]).read_text()) for c in CASES]
    rev = "abc"
    done = tuple(Condition(t, "True", Reason.SUCCEEDED, "", rev) for t in ("DataReady", "Trained", "Evaluated", "GatePassed"))
    objs += [cr_with(SpecStatus("x", summarize(done, False, rev), rev)),
             cr_with(SpecStatus("x", summarize(done[:1], False, rev), rev)),
             cr_with(SpecStatus("x", (Condition("Trained", "False", Reason.TRAINING_FAILED, "", rev),), rev))]
    seen = set()
    for obj in objs:
        flux = flux_health(expr, obj)
        seen.add(flux)
        assert FLUX_TO_ARGO[flux] == lua_health(obj)["status"], (obj.get("status"), flux)
    assert seen == {"InProgress", "Failed", "Current"}
