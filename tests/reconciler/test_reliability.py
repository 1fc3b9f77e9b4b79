"""Reconciler behaviour that needs no training: git outages, invalid and deleted specs, the
delete-everything guard, signed commits, backoff and stalls. The demo repo's reviews are removed
so every pass stops at DataReady (ReviewPending) before anything trains."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from controller import demo
from controller.backends.local import LocalBackend
from controller.reconcile import ControllerConfig, Reconciler
from controller.seams.backend import Phase


def reconciler(repo: Path, home: Path, **config) -> Reconciler:
    return Reconciler(ControllerConfig(repo=str(repo), home=home, **config), LocalBackend(home / "runs"))


@pytest.fixture
def unreviewed(demo_repo):
    """The demo repo without its reviews, plus a second, independent spec."""
    root = demo_repo.root
    subprocess.run(["git", "rm", "-q", "-r", "reviews"], cwd=root, check=True)
    (root / "specs" / "other.yaml").write_text(demo.spec_text(name="other"))
    demo.commit(root, "second spec, no reviews yet")
    return demo_repo


def conditions(status) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_review_pending_stops_before_training_and_names_the_reason(unreviewed, tmp_path):
    result = reconciler(unreviewed.root, tmp_path / "home").reconcile_once()
    status = result.statuses[demo.SPEC_NAME]
    assert conditions(status)["DataReady"] == ("False", "ReviewPending")
    assert conditions(status)["Stalled"][0] == "True"
    assert status.phase == "Stalled"
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())


def test_one_invalid_spec_never_blocks_the_others(unreviewed, tmp_path):
    root = unreviewed.root
    (root / "specs" / "broken.yaml").write_text(demo.spec_text(name="broken").replace("epochs:", "epocs:"))
    demo.commit(root, "a typo")
    result = reconciler(root, tmp_path / "home").reconcile_once()
    broken = result.statuses["broken"]
    assert conditions(broken)["Stalled"] == ("True", "SpecInvalid")
    assert "spec.training.epocs" in broken.condition("Stalled").message
    for name in (demo.SPEC_NAME, "other"):
        assert conditions(result.statuses[name])["DataReady"] == ("False", "ReviewPending")


def test_git_outage_reports_source_unavailable_and_changes_nothing(unreviewed, tmp_path):
    home = tmp_path / "home"
    first = reconciler(unreviewed.root, home).reconcile_once()
    ledger_before = (home / "ledger.db").read_bytes()
    moved = unreviewed.root.with_name("moved-away")
    shutil.move(unreviewed.root, moved)  # the repository is gone (a network outage, a deleted mirror)
    try:
        result = reconciler(unreviewed.root, home).reconcile_once()
    finally:
        shutil.move(moved, unreviewed.root)
    assert result.commit is None and result.error
    for name, status in result.statuses.items():
        assert conditions(status)["SourceAvailable"] == ("False", "SourceUnavailable")
        # everything learned before the outage is still reported
        assert conditions(status)["DataReady"] == conditions(first.statuses[name])["DataReady"]
    assert set(result.statuses) == set(first.statuses)
    assert (home / "ledger.db").read_bytes()[:100] == ledger_before[:100]


def test_a_bad_revision_is_source_unavailable(unreviewed, tmp_path):
    result = reconciler(unreviewed.root, tmp_path / "home", rev="no-such-branch").reconcile_once()
    assert result.commit is None and "no-such-branch" in result.error


def test_deleted_spec_prunes_status_but_keeps_the_ledger(unreviewed, tmp_path):
    home = tmp_path / "home"
    rec = reconciler(unreviewed.root, home)
    rec.reconcile_once()
    subprocess.run(["git", "rm", "-q", "specs/other.yaml"], cwd=unreviewed.root, check=True)
    sha = demo.commit(unreviewed.root, "delete other")
    result = rec.reconcile_once()
    assert "other" not in result.statuses and demo.SPEC_NAME in result.statuses
    pruned = [e for e in rec.ledger.events(kind="spec.pruned")]
    assert [(e.spec, e.payload["commit"]) for e in pruned] == [("other", sha)]
    assert any(e.spec == "other" for e in rec.ledger.events(kind="spec.observed"))  # history stays
    assert rec.ledger.verify().ok


def test_a_commit_deleting_every_spec_is_refused_unless_confirmed(unreviewed, tmp_path):
    home = tmp_path / "home"
    reconciler(unreviewed.root, home).reconcile_once()
    subprocess.run(["git", "rm", "-q", "-r", "specs"], cwd=unreviewed.root, check=True)
    demo.commit(unreviewed.root, "oops")
    refused = reconciler(unreviewed.root, home).reconcile_once()
    assert "deletes every spec" in refused.error
    assert set(refused.statuses) == {demo.SPEC_NAME, "other"}
    assert all(conditions(s)["Stalled"] == ("True", "DeleteAllRefused") for s in refused.statuses.values())
    confirmed = reconciler(unreviewed.root, home, allow_delete_all=True).reconcile_once()
    assert confirmed.statuses == {}


def test_stalled_spec_is_retried_only_when_its_inputs_change(unreviewed, tmp_path):
    home = tmp_path / "home"
    rec = reconciler(unreviewed.root, home)
    rec.reconcile_once()
    observed = sum(1 for _ in rec.ledger.events(kind="data.versioned"))
    rec.reconcile_once()  # nothing changed: the stalled spec is not re-prepared
    assert sum(1 for _ in rec.ledger.events(kind="data.versioned")) == observed
    state = json.loads((home / "state" / f"{demo.SPEC_NAME}.json").read_text())
    assert state["stalledKey"]
    demo.write_reviews(unreviewed.root, demo.SPEC_NAME)  # the expert's verdicts land
    demo.commit(unreviewed.root, "reviews")
    try:
        status = rec.reconcile_once().statuses[demo.SPEC_NAME]
        assert conditions(status)["DataReady"] == ("True", "DataReady")
        # Unstalled, the spec went on and submitted its run.
        assert status.run_id and rec.backend.status(status.run_id).phase in (Phase.PENDING, Phase.RUNNING)
    finally:
        # This module trains nothing: left running, the demo's four epochs cost a minute of CPU
        # after the test ended.
        for run in rec.backend.runs():
            rec.backend.cancel(run, grace_seconds=0)


def _ssh_key(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def _signed_commit(repo: Path, key: Path | None, message: str) -> str:
    (repo / "CHANGELOG.md").write_text(message + "\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    if key is None:
        args = ["git", "commit", "-q", "-m", message]
    else:
        args = ["git", "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S", "-q", "-m", message]
    subprocess.run(args, cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_signed_commit_mode_acts_only_on_allowed_signers(unreviewed, tmp_path):
    trusted, stranger = _ssh_key(tmp_path, "trusted"), _ssh_key(tmp_path, "stranger")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"platform@example.com {(trusted.with_suffix('.pub')).read_text().strip()}\n")
    home = tmp_path / "home"
    rec = reconciler(unreviewed.root, home, allowed_signers=signers)
    assert rec.reconcile_once().commit is None  # nothing verified yet: nothing reconciled

    good = _signed_commit(unreviewed.root, trusted, "signed by the platform team")
    assert rec.reconcile_once().commit == good

    unsigned = _signed_commit(unreviewed.root, None, "unsigned")
    assert rec.reconcile_once().commit == good  # the last verified commit stays live
    other = _signed_commit(unreviewed.root, stranger, "signed by an unknown key")
    assert rec.reconcile_once().commit == good
    assert not any(e.payload.get("commit") in (unsigned, other) for e in rec.ledger.events())


def test_a_git_url_is_mirrored_and_read_at_the_revision(unreviewed, tmp_path):
    home = tmp_path / "home"
    rec = reconciler(f"file://{unreviewed.root}", home)
    result = rec.reconcile_once()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=unreviewed.root, capture_output=True, text=True).stdout.strip()
    assert result.commit == head
    assert conditions(result.statuses[demo.SPEC_NAME])["DataReady"] == ("False", "ReviewPending")  # pulled via DVC
    assert (home / "git").is_dir()  # the mirror lives in the controller's home, not in the user's repo
