"""The manifest diff of `ftops plan` (controller.manifest_diff): objects paired by role, not by
name (names carry the run id), only the fields that change, the identities every object repeats
said once; a new commit alone is no change."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_plan_git import SPEC  # noqa: E402

from controller.catalog import load_operator_config  # noqa: E402
from controller.manifest_diff import for_spec, role_of, to_markdown  # noqa: E402
from controller.source import DataVersion, SpecAtRev  # noqa: E402
from controller.spec.load import load_spec_text  # noqa: E402

OPERATOR = load_operator_config()
A, B = "a" * 40, "b" * 40


def state(text: str = SPEC, md5: str = "c" * 32) -> SpecAtRev:
    loaded = load_spec_text(text, "specs/triage.yaml")
    assert loaded.spec is not None, [i.format() for i in loaded.issues]
    return SpecAtRev("specs/triage.yaml", "f" * 40, loaded, DataVersion("data/tickets.jsonl", md5, 100, 10, "dvc"))


def test_a_new_commit_alone_changes_nothing():
    diff = for_spec(state(), state(), A, B, OPERATOR)
    assert not diff.changed and diff.identities == () and to_markdown(diff) == "no manifest changes"


def test_max_hours_changes_one_field_of_the_training_workload():
    diff = for_spec(state(), state(SPEC.replace("gpuType: a100-80gb}", "gpuType: a100-80gb, maxHours: 2}")), A, B, OPERATOR)
    assert [(o.role, o.change) for o in diff.objects] == [("training workload", "changed")]
    (field,) = diff.objects[0].fields
    assert field.path.endswith("activeDeadlineSeconds") and (field.base, field.head) == (86400, 7200)
    assert diff.identities == ()  # maxHours is not part of the run's identity


def test_a_retrain_pairs_renamed_objects_by_role_and_says_the_run_id_once():
    base, head = state(), state(SPEC.replace("epochs: 2", "epochs: 5"))
    diff = for_spec(base, head, A, B, OPERATOR)
    assert [f.path for f in diff.identities] == ["run id", "evaluation id"]  # a new run is a new evaluation
    assert all(o.change == "changed" for o in diff.objects)  # nothing shown as deleted and added again
    fields = {f.path: (f.base, f.head) for o in diff.objects for f in o.fields}
    assert fields['data["run.json"].training.epochs'] == (2.0, 5.0)
    assert not any("<run>" not in str(v) and diff.identities[0].head in str(v) for pair in fields.values() for v in pair)
    text = to_markdown(diff, full_render=False)
    assert text.count("\n") < 15 and "Every object follows run id" in text


def test_added_and_removed_specs_list_their_objects():
    added = for_spec(None, state(), None, B, OPERATOR)
    assert added.objects and {o.change for o in added.objects} == {"added"}
    assert {o.role for o in added.objects} >= {"training workload", "run config (run.json)", "evaluation Job",
                                               "evaluation config (eval.json)", "serving Deployment"}
    assert "full render at head" in to_markdown(added)
    removed = for_spec(state(), None, A, None, OPERATOR)
    assert {o.change for o in removed.objects} == {"removed"} and removed.head_yaml == ""


def test_roles_do_not_depend_on_names():
    job = {"kind": "Job", "metadata": {"name": "triage-0123456789ab-train",
                                        "labels": {"app.kubernetes.io/component": "training", "ftops.dev/run-id": "0123456789ab"}}}
    other = {"kind": "Job", "metadata": {"name": "triage-ba9876543210-train",
                                          "labels": {"app.kubernetes.io/component": "training", "ftops.dev/run-id": "ba9876543210"}}}
    assert role_of(job) == role_of(other) == "training workload"


def _eval_job(diff) -> dict:
    import yaml

    return next(d for d in yaml.safe_load_all(diff.head_yaml) if d and d["kind"] == "Job"
                and d["metadata"]["labels"]["app.kubernetes.io/component"] == "evaluation")


def test_a_gates_only_change_shows_the_evaluation_and_nothing_else():
    """Same run, new evaluation id: the eval.json ConfigMap is paired with base's by role and shows
    the one threshold; the evaluation id is said once; training and serving objects do not move."""
    base, head = state(), state(SPEC.replace("min: 0.9}", "min: 0.95}"))
    diff = for_spec(base, head, A, B, OPERATOR)
    assert [f.path for f in diff.identities] == ["evaluation id"]
    assert [(o.role, o.change) for o in diff.objects] == [("evaluation config (eval.json)", "changed")]
    (field,) = diff.objects[0].fields
    assert (field.path, field.base, field.head) == ('data["eval.json"].finetune.spec.evaluation.task.min', 0.9, 0.95)
    # the Job and its config at head are named by the evaluation id the controller computes (controller.desired)
    from controller.desired import identities
    from controller.render import template_version

    want = identities(head, template_version()).evaluation
    assert diff.identities[0].head == want and diff.objects[0].head_name == f"triage-{want[:12]}-evalcfg"
    job = _eval_job(for_spec(None, head, None, B, OPERATOR))  # a new spec: everything is in the full render
    assert job["metadata"]["annotations"]["ftops.dev/eval-id"] == want and job["metadata"]["name"] == f"triage-{want[:12]}-eval"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == ["python", "-m", "controller.evaluate"]
    text = to_markdown(diff, full_render=False)
    assert "evaluation id" in text and "`<eval>`" in text and "task.min" in text


def test_a_corpus_edit_re_evaluates_the_same_run_on_the_new_corpus_version():
    """A corpus-only change (same folder, new content): no training object changes; eval.json's
    served configuration (corpus version, its hash) does."""
    diff = for_spec(state(), state(), A, B, OPERATOR, corpus_versions=("git:" + "1" * 40, "git:" + "2" * 40))
    assert [f.path for f in diff.identities] == ["evaluation id"]
    assert {o.role for o in diff.objects} == {"evaluation config (eval.json)"}
    fields = {f.path: (f.base, f.head) for f in diff.objects[0].fields}
    assert fields['data["eval.json"].serving.corpusVersion'] == ("git:" + "1" * 40, "git:" + "2" * 40)
    assert 'data["eval.json"].serving.configSha256' in fields


def test_adding_a_corpus_changes_the_evaluation_job_paired_by_role():
    """A served configuration that gains retrieval: the evaluation Job (renamed: new evaluation id)
    is paired with base's, not deleted and added, and shows the corpus it now fetches."""
    base = state(SPEC.replace("serving: {corpus: corpora/kb, replicas: 1}", "serving: {replicas: 1}"))
    diff = for_spec(base, state(), A, B, OPERATOR, corpus_versions=(None, "git:" + "3" * 40))
    by_role = {o.role: o for o in diff.objects}
    job = by_role["evaluation Job"]
    assert job.change == "changed" and job.base_name != job.head_name
    assert any("[corpus]" in f.path and f.base is None for f in job.fields)
    assert "evaluation config (eval.json)" in by_role


def test_a_change_that_keeps_the_evaluation_id_shows_no_evaluation_objects():
    """maxHours sets the evaluation Job's deadline too, but an unchanged evaluation is not run again."""
    diff = for_spec(state(), state(SPEC.replace("gpuType: a100-80gb}", "gpuType: a100-80gb, maxHours: 2}")), A, B, OPERATOR)
    assert not any(o.role.startswith("evaluation") for o in diff.objects)
