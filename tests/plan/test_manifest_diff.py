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
    assert [f.path for f in diff.identities] == ["run id"]
    assert all(o.change == "changed" for o in diff.objects)  # nothing shown as deleted and added again
    fields = {f.path: (f.base, f.head) for o in diff.objects for f in o.fields}
    assert fields['data["run.json"].training.epochs'] == (2.0, 5.0)
    assert not any("<run>" not in str(v) and diff.identities[0].head in str(v) for pair in fields.values() for v in pair)
    text = to_markdown(diff, full_render=False)
    assert text.count("\n") < 15 and "Every object follows run id" in text


def test_added_and_removed_specs_list_their_objects():
    added = for_spec(None, state(), None, B, OPERATOR)
    assert added.objects and {o.change for o in added.objects} == {"added"}
    assert {o.role for o in added.objects} >= {"training workload", "run config (run.json)", "serving Deployment"}
    assert "full render at head" in to_markdown(added)
    removed = for_spec(state(), None, A, None, OPERATOR)
    assert {o.change for o in removed.objects} == {"removed"} and removed.head_yaml == ""


def test_roles_do_not_depend_on_names():
    job = {"kind": "Job", "metadata": {"name": "triage-0123456789ab-train",
                                        "labels": {"app.kubernetes.io/component": "training", "ftops.dev/run-id": "0123456789ab"}}}
    other = {"kind": "Job", "metadata": {"name": "triage-ba9876543210-train",
                                          "labels": {"app.kubernetes.io/component": "training", "ftops.dev/run-id": "ba9876543210"}}}
    assert role_of(job) == role_of(other) == "training workload"
