"""The ledger on its own: every branch of verify(), the head anchor that catches a cut-off
tail, idempotency, the write fence, and the trace queries on a small hand-built chain.

Tampering goes through a raw sqlite3 connection that drops the append-only triggers first,
as someone holding the file would: the triggers stop ftops, not an attacker."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.errors import PermanentError
from controller.fsutil import sha256_file
from controller.ledger import (
    GENESIS,
    Anchor,
    AnchorFile,
    Ledger,
    canonical,
    provenance_statements,
    read_anchor_file,
    record_hash,
    status_anchors,
    trace,
)


def tamper(path: Path, *statements: tuple) -> None:
    """Run SQL against the ledger file with the triggers dropped (they come back when ftops
    opens the file again, which is what an attacker would leave behind)."""
    db = sqlite3.connect(str(path))
    db.execute("DROP TRIGGER IF EXISTS events_no_update")
    db.execute("DROP TRIGGER IF EXISTS events_no_delete")
    for statement in statements:
        db.execute(*statement)
    db.commit()
    db.close()


def rehash_from(path: Path, seq: int) -> None:
    """Recompute hash and prev_hash of every record from `seq` on: an attacker who knows the
    algorithm rewrites a record and re-chains everything after it."""
    db = sqlite3.connect(str(path))
    db.execute("DROP TRIGGER IF EXISTS events_no_update")
    rows = db.execute("SELECT seq, time, kind, spec, run_id, payload, hash FROM events ORDER BY seq").fetchall()
    prev = GENESIS
    for row_seq, time, kind, spec, run_id, payload, digest in rows:
        if row_seq >= seq:
            digest = record_hash(row_seq, time, kind, spec, run_id, json.loads(payload), prev)
            db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row_seq))
        prev = digest
    db.commit()
    db.close()


def filled(path: Path, n: int = 6, tag: str = "a") -> Ledger:
    ledger = Ledger(path)
    for i in range(1, n + 1):
        ledger.append("spec.observed", f"spec-{i % 2}", None, {"commit": f"{tag}{i:039d}", "i": i})
    return ledger


def reopened(path: Path) -> Ledger:
    return Ledger(path)


# ----------------------------------------------------------------------------- the chain


def test_an_intact_chain_verifies_and_an_empty_one_too(tmp_path):
    empty = Ledger(tmp_path / "empty.db").verify()
    assert empty.ok and empty.checked == 0
    result = filled(tmp_path / "l.db").verify()
    assert result.ok and result.checked == 6 and result.first_bad_seq is None and result.anchors == 0


def test_records_link_each_to_the_one_before(tmp_path):
    events = list(filled(tmp_path / "l.db", 3).events())
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    first = events[0]
    assert first.hash == record_hash(1, first.time, first.kind, first.spec, first.run_id, first.payload, GENESIS)


def test_the_triggers_refuse_update_and_delete_through_the_ledgers_connection(tmp_path):
    ledger = filled(tmp_path / "l.db", 2)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        ledger._db.execute("UPDATE events SET kind = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        ledger._db.execute("DELETE FROM events WHERE seq = 2")
    assert ledger.count() == 2 and ledger.verify().ok


def test_a_deleted_record_is_a_gap_in_seq(tmp_path):
    path = tmp_path / "l.db"
    filled(path).close()
    tamper(path, ("DELETE FROM events WHERE seq = 3",))
    result = reopened(path).verify()
    assert not result.ok and result.first_bad_seq == 4
    assert result.problem == "record 4 follows record 2: a record is missing"


def test_a_deleted_record_with_the_rest_renumbered_breaks_the_link(tmp_path):
    path = tmp_path / "l.db"
    filled(path).close()
    tamper(path, ("DELETE FROM events WHERE seq = 3",), ("UPDATE events SET seq = seq - 1 WHERE seq > 3",))
    result = reopened(path).verify()
    assert not result.ok and result.first_bad_seq == 3
    assert "does not link to record 2" in result.problem


def test_a_changed_payload_does_not_match_its_hash(tmp_path):
    path = tmp_path / "l.db"
    filled(path).close()
    edited = canonical({"commit": "b" * 40, "i": 2})
    tamper(path, ("UPDATE events SET payload = ? WHERE seq = 2", (edited,)))
    result = reopened(path).verify(check_artifacts=False)
    assert not result.ok and result.first_bad_seq == 2
    assert result.problem == "record 2 (spec.observed) content does not match its hash (edited)"


def test_a_changed_column_outside_the_payload_does_not_match_either(tmp_path):
    path = tmp_path / "l.db"
    filled(path).close()
    tamper(path, ("UPDATE events SET spec = 'someone-else' WHERE seq = 5",))
    result = reopened(path).verify()
    assert not result.ok and result.first_bad_seq == 5 and "does not match its hash" in result.problem


def test_a_payload_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "l.db"
    filled(path).close()
    tamper(path, ("UPDATE events SET payload = '{\"commit\": ' WHERE seq = 4",))
    result = reopened(path).verify()
    assert not result.ok and result.first_bad_seq == 4 and result.problem == "record 4 payload is not JSON (edited)"


def test_the_first_bad_record_is_named_when_several_are(tmp_path):
    path = tmp_path / "l.db"
    filled(path).close()
    tamper(path, ("UPDATE events SET payload = 'x' WHERE seq = 5",), ("UPDATE events SET kind = 'x' WHERE seq = 2",))
    assert reopened(path).verify().first_bad_seq == 2


def test_values_json_cannot_carry_are_refused_before_anything_is_written(tmp_path):
    ledger = filled(tmp_path / "l.db", 1)
    with pytest.raises(ValueError):
        ledger.append("eval.reported", "s", "r", {"loss": float("nan")})
    with pytest.raises(TypeError):
        ledger.append("eval.reported", "s", "r", {"when": object()})
    assert ledger.count() == 1 and ledger.verify().ok


# ----------------------------------------------------------------------------- artifacts


def finished_run(tmp_path: Path) -> tuple[Ledger, Path, dict]:
    out = tmp_path / "store" / "s" / "r1"
    (out / "model").mkdir(parents=True)
    (out / "model" / "adapter.safetensors").write_bytes(b"\x00weights" * 100)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    artifacts = {rel: sha256_file(out / rel) for rel in ("model/adapter.safetensors", "metrics.jsonl")}
    ledger = Ledger(tmp_path / "l.db")
    ledger.append("run.submitted", "s", "r1", {"commit": "c" * 40, "dataMd5": "d" * 32})
    ledger.append("run.finished", "s", "r1", {"outputDir": str(out), "artifacts": artifacts})
    return ledger, out, artifacts


def test_recorded_artifacts_that_match_verify(tmp_path):
    ledger, _, _ = finished_run(tmp_path)
    assert ledger.verify().ok


def test_a_missing_artifact_is_named_with_its_record(tmp_path):
    ledger, out, _ = finished_run(tmp_path)
    (out / "metrics.jsonl").unlink()
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 2
    assert result.problem == f"artifact {out / 'metrics.jsonl'} recorded in record 2 is missing"
    assert ledger.verify(check_artifacts=False).ok  # the chain itself is intact


def test_a_changed_artifact_is_named_with_its_record(tmp_path):
    ledger, out, _ = finished_run(tmp_path)
    target = out / "model" / "adapter.safetensors"
    data = bytearray(target.read_bytes())
    data[3] ^= 0x01
    target.write_bytes(bytes(data))
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 2
    assert result.problem == f"artifact {target} no longer matches the sha256 recorded in record 2"


def test_the_chain_is_checked_before_the_artifacts(tmp_path):
    ledger, out, _ = finished_run(tmp_path)
    ledger.close()
    (out / "metrics.jsonl").unlink()
    tamper(tmp_path / "l.db", ("UPDATE events SET kind = 'run.started' WHERE seq = 1",))
    result = reopened(tmp_path / "l.db").verify()
    assert result.first_bad_seq == 1 and "does not match its hash" in result.problem


# ----------------------------------------------------------------------------- writing


def test_append_once_records_a_fact_once(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    first = ledger.append_once("run.submitted", "s", "r1", {"commit": "c1"}, key="r1")
    again = ledger.append_once("run.submitted", "s", "r1", {"commit": "c2"}, key="r1")
    assert again == first and again.payload == {"commit": "c1"} and ledger.count() == 1
    other_kind = ledger.append_once("run.finished", "s", "r1", {}, key="r1")
    other_key = ledger.append_once("run.submitted", "s", "r2", {}, key="r2")
    assert (other_kind.seq, other_key.seq) == (2, 3) and ledger.count() == 3


def test_the_database_refuses_a_second_record_with_the_same_kind_and_key(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.append("gate.decided", "s", "r", {"passed": True}, key="r:e")
    with pytest.raises(sqlite3.IntegrityError):
        ledger.append("gate.decided", "s", "r", {"passed": False}, key="r:e")
    assert ledger.count() == 1 and ledger.verify().ok
    ledger.append("gate.decided", "s", "r", {"passed": False})  # no key: no uniqueness
    assert ledger.count() == 2


def test_append_once_that_loses_a_race_returns_the_winners_record(tmp_path, monkeypatch):
    path = tmp_path / "l.db"
    ours, theirs = Ledger(path), Ledger(path)
    real_find = ours.find_one
    calls = []

    def find_before_the_other_process_wrote(kind, key):
        calls.append(key)
        if len(calls) == 1:  # our read happens; then the other process records the same fact
            theirs.append("run.submitted", "s", "r1", {"by": "theirs"}, key=key)
            return None
        return real_find(kind, key)

    monkeypatch.setattr(ours, "find_one", find_before_the_other_process_wrote)
    got = ours.append_once("run.submitted", "s", "r1", {"by": "ours"}, key="r1")
    assert got.payload == {"by": "theirs"} and ours.count() == 1 and len(calls) == 2


def test_the_fence_runs_before_every_write_and_a_raising_fence_writes_nothing(tmp_path):
    class Deposed(Exception):
        pass

    leader = {"held": True, "checks": 0}
    heads: list[Anchor] = []

    def fence() -> None:
        leader["checks"] += 1
        if not leader["held"]:
            raise Deposed("lost the lease")

    ledger = Ledger(tmp_path / "l.db", before_write=fence, anchor_sink=heads.append)
    ledger.append("spec.observed", "s", None, {"commit": "c1"})
    ledger.append_once("run.submitted", "s", "r1", {}, key="r1")
    assert leader["checks"] == 2
    leader["held"] = False
    with pytest.raises(Deposed):
        ledger.append("spec.observed", "s", None, {"commit": "c2"})
    with pytest.raises(Deposed):
        ledger.append_once("run.submitted", "s", "r2", {}, key="r2")
    assert ledger.count() == 2 and len(heads) == 2 and Ledger(tmp_path / "l.db").count() == 2
    # a fact already recorded is found without writing, so the fence is not asked
    assert ledger.append_once("run.submitted", "s", "r1", {}, key="r1").seq == 2


# ----------------------------------------------------------------------------- reading


def test_events_filters_by_spec_run_kind_and_after(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.append("spec.observed", "a", None, {})
    ledger.append("run.submitted", "a", "r1", {})
    ledger.append("spec.observed", "b", None, {})
    ledger.append("run.finished", "a", "r1", {})
    ledger.append("run.submitted", "b", "r2", {})
    seqs = lambda **kw: [e.seq for e in ledger.events(**kw)]  # noqa: E731
    assert seqs() == [1, 2, 3, 4, 5]
    assert seqs(spec="a") == [1, 2, 4]
    assert seqs(run_id="r1") == [2, 4]
    assert seqs(kind="run.submitted") == [2, 5]
    assert seqs(spec="a", kind="run.submitted") == [2]
    assert seqs(after=3) == [4, 5]
    assert seqs(spec="b", after=3) == [5]
    assert seqs(spec="nobody") == []


def test_find_one_and_last(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    assert ledger.last() is None and ledger.find_one("run.submitted", "r1") is None
    ledger.append("run.submitted", "a", "r1", {"n": 1}, key="r1")
    ledger.append("deploy.promoted", "a", "r1", {"n": 2})
    ledger.append("run.submitted", "b", "r2", {"n": 3}, key="r2")
    ledger.append("deploy.promoted", "b", "r2", {"n": 4})
    assert ledger.find_one("run.submitted", "r2").payload == {"n": 3}
    assert ledger.find_one("run.finished", "r2") is None
    assert ledger.last().seq == 4
    assert ledger.last(kind="run.submitted").run_id == "r2"
    assert ledger.last(kind="deploy.promoted", spec="a").payload == {"n": 2}
    assert ledger.last(run_id="r1").seq == 2
    assert ledger.last(kind="spec.pruned") is None


# ----------------------------------------------------------------------------- anchors


def test_head_is_the_last_record_and_genesis_when_empty(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    assert ledger.head() == Anchor(0, GENESIS)
    last = ledger.append("spec.observed", "s", None, {})
    assert ledger.head() == Anchor(1, last.hash)
    assert Anchor.from_dict(ledger.head().to_dict()) == ledger.head()


@pytest.mark.parametrize(("data", "field"), [
    ({"seq": "3", "hash": "a" * 64}, "'seq'"),
    ({"seq": True, "hash": "a" * 64}, "'seq'"),
    ({"seq": -1, "hash": "a" * 64}, "'seq'"),
    ({"hash": "a" * 64}, "'seq'"),
    ({"seq": 3, "hash": "A" * 64}, "'hash'"),
    ({"seq": 3, "hash": "a" * 63}, "'hash'"),
    ({"seq": 3}, "'hash'"),
    ({"seq": 0, "hash": "a" * 64}, "seq 0"),
    ([3, "a" * 64], "an object"),
])
def test_a_malformed_anchor_is_refused_naming_where_and_the_field(data, field):
    with pytest.raises(PermanentError) as err:
        Anchor.from_dict(data, "status/a.json: ledgerHead")
    assert str(err.value).startswith("status/a.json: ledgerHead: ") and field in str(err.value)


def test_the_sink_gets_every_new_head_after_the_record_is_durable(tmp_path):
    path = tmp_path / "l.db"
    seen: list[tuple[Anchor, int]] = []
    ledger = Ledger(path, anchor_sink=lambda anchor: seen.append((anchor, Ledger(path).count())))
    events = [ledger.append("spec.observed", "s", None, {"i": i}) for i in range(3)]
    ledger.append_once("run.submitted", "s", "r", {}, key="r")
    ledger.append_once("run.submitted", "s", "r", {}, key="r")  # nothing new: no new head
    assert [anchor for anchor, _ in seen] == [Anchor(e.seq, e.hash) for e in events] + [ledger.head()]
    assert [count for _, count in seen] == [1, 2, 3, 4]  # another connection already sees the record


def test_a_sink_that_fails_reaches_the_caller_and_the_record_stays(tmp_path):
    def broken_sink(anchor: Anchor) -> None:
        raise OSError("disk full")

    ledger = Ledger(tmp_path / "l.db", anchor_sink=broken_sink)
    with pytest.raises(OSError, match="disk full"):
        ledger.append("spec.observed", "s", None, {})
    assert ledger.count() == 1 and ledger.verify().ok


def test_the_anchor_file_follows_the_head_and_never_moves_back(tmp_path):
    sink = AnchorFile(tmp_path / "anchors" / "head.json")
    ledger = Ledger(tmp_path / "l.db", anchor_sink=sink)
    for i in range(3):
        ledger.append("spec.observed", "s", None, {"i": i})
    assert sink.read() == ledger.head() == read_anchor_file(sink.path)
    assert json.loads(sink.path.read_text()) == ledger.head().to_dict()
    sink(Anchor(1, next(ledger.events()).hash))  # a late head from another process
    assert sink.read() == ledger.head()
    assert [p.name for p in sink.path.parent.iterdir()] == ["head.json"]  # no temporary left behind


def test_an_older_anchor_still_holds_as_the_ledger_grows(tmp_path):
    ledger = filled(tmp_path / "l.db", 3)
    early = ledger.head()
    for i in range(3):
        ledger.append("spec.observed", "s", None, {"later": i})
    result = ledger.verify(anchors={"checkpoint-1.json": early, "checkpoint-2.json": ledger.head(),
                                    "genesis": Anchor(0, GENESIS)})
    assert result.ok and result.checked == 6 and result.anchors == 3


def test_a_cut_off_tail_passes_without_an_anchor_and_is_caught_with_one(tmp_path):
    path = tmp_path / "l.db"
    ledger = filled(path)
    anchor = ledger.head()
    ledger.close()
    tamper(path, ("DELETE FROM events WHERE seq > 4",))
    ledger = reopened(path)
    # The limitation an anchor exists for: every remaining link still verifies.
    assert ledger.verify().ok and ledger.verify().checked == 4
    result = ledger.verify(anchors={"/audit/head.json": anchor})
    assert not result.ok and result.first_bad_seq == 5 and result.anchors == 1
    assert result.problem.startswith(f"records after #4 were removed: the anchor from /audit/head.json says #6 with hash {anchor.hash}")


def test_a_ledger_rewritten_from_scratch_does_not_match_the_anchor(tmp_path):
    path = tmp_path / "l.db"
    ledger = filled(path, tag="a")
    anchor = ledger.head()
    ledger.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    forged = filled(path, tag="f")  # same number of records, other content
    assert forged.count() == anchor.seq and forged.verify().ok
    result = forged.verify(anchors={"status/s.json": anchor})
    assert not result.ok and result.first_bad_seq == 6
    assert f"the anchor from status/s.json says #6 with hash {anchor.hash}" in result.problem
    assert forged.head().hash in result.problem


def test_a_rewritten_and_rechained_record_does_not_match_a_later_anchor(tmp_path):
    path = tmp_path / "l.db"
    ledger = filled(path)
    anchor = ledger.head()
    ledger.close()
    tamper(path, ("UPDATE events SET payload = ? WHERE seq = 2", (canonical({"commit": "e" * 40, "i": 2}),)))
    rehash_from(path, 2)
    ledger = reopened(path)
    assert ledger.verify().ok  # consistent forgery: the chain alone cannot tell
    result = ledger.verify(anchors={"kept": anchor})
    assert not result.ok and result.first_bad_seq == 6 and "rewritten" in result.problem


def test_an_anchor_from_the_future_on_an_intact_ledger_is_a_clear_error(tmp_path):
    ledger = filled(tmp_path / "l.db", 3)
    future = Anchor(9, "9" * 64)
    result = ledger.verify(anchors={"other-home/head.json": future, "own": ledger.head()})
    assert not result.ok and result.checked == 3 and result.first_bad_seq == 4
    assert "the anchor from other-home/head.json says #9" in result.problem
    assert "the ledger ends at #3" in result.problem and "verify against one that was" in result.problem


def test_status_files_carry_anchors_under_ledger_head(tmp_path):
    status = tmp_path / "status"
    status.mkdir()
    (status / "a.json").write_text(json.dumps({"name": "a", "ledgerHead": {"seq": 4, "hash": "4" * 64}}))
    (status / "b.json").write_text(json.dumps({"name": "b"}))  # written before anchors existed
    (status / "notes.txt").write_text("not a status")
    assert status_anchors(status) == {str(status / "a.json"): Anchor(4, "4" * 64)}
    assert status_anchors(tmp_path / "nowhere") == {}
    (status / "c.json").write_text(json.dumps({"name": "c", "ledgerHead": {"seq": 4}}))
    with pytest.raises(PermanentError, match=r"c\.json: ledgerHead: field 'hash'"):
        status_anchors(status)


def test_anchor_files_that_cannot_be_read_say_what_to_do(tmp_path):
    with pytest.raises(PermanentError, match="no such anchor file.*ftops audit checkpoint --out"):
        read_anchor_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{seq: 1")
    with pytest.raises(PermanentError, match=r"bad\.json: not a JSON anchor file"):
        read_anchor_file(tmp_path / "bad.json")
    (tmp_path / "saved-status.json").write_text(json.dumps({"ledgerHead": {"seq": 2, "hash": "2" * 64}}))
    assert read_anchor_file(tmp_path / "saved-status.json") == Anchor(2, "2" * 64)


# ----------------------------------------------------------------------------- trace


COMMIT_1, COMMIT_2 = "1a2b3c4d" + "0" * 32, "9f8e7d6c" + "0" * 32
DATA = "d" * 32


@pytest.fixture
def chain(tmp_path) -> Ledger:
    """Two commits of spec `triage` trained on the same data; the first run passed its gate and
    serves; the second finished but failed its gate. Spec `other` is observed, never trained."""
    ledger = Ledger(tmp_path / "l.db")
    ledger.append("spec.observed", "triage", None, {"commit": COMMIT_1, "author": "ana", "email": "ana@x", "message": "train"})
    ledger.append("data.versioned", "triage", None, {"md5": DATA, "path": "data/triage.jsonl"})
    ledger.append("run.submitted", "triage", "run-1", {"commit": COMMIT_1, "dataMd5": DATA, "backend": "local",
                                                       "baseModel": "models/tiny", "baseModelRevision": "abc"})
    ledger.append("run.finished", "triage", "run-1", {"artifacts": {"model/adapter.safetensors": "a1" * 32},
                                                      "manifestSha256": "m1" * 32})
    ledger.append("eval.reported", "triage", "run-1", {"reportSha256": "e1" * 32})
    ledger.append("gate.decided", "triage", "run-1", {"passed": True})
    ledger.append("deploy.promoted", "triage", "run-1", {"to": "run-1"})
    ledger.append("spec.observed", "triage", None, {"commit": COMMIT_2, "author": "bo"})
    ledger.append("run.submitted", "triage", "run-2", {"commit": COMMIT_2, "dataMd5": DATA, "backend": "local"})
    ledger.append("run.finished", "triage", "run-2", {"artifacts": {"model/adapter.safetensors": "a2" * 32}})
    ledger.append("gate.decided", "triage", "run-2", {"passed": False})
    ledger.append("spec.observed", "other", None, {"commit": COMMIT_2})
    return ledger


def test_trace_a_run_gives_its_whole_chain(chain):
    found = trace(chain, "run-1")
    assert found.matched == "run" and len(found.runs) == 1
    run = found.runs[0]
    assert run["spec"] == "triage"
    assert run["requestedBy"]["seq"] == 1 and run["requestedBy"]["payload"]["author"] == "ana"
    assert run["data"]["seq"] == 2
    assert [run[k]["seq"] for k in ("submitted", "finished", "evaluation", "gate")] == [3, 4, 5, 6]
    assert [d["seq"] for d in run["deployments"]] == [7]
    second = trace(chain, "run-2").runs[0]
    assert second["requestedBy"]["seq"] == 8 and second["evaluation"] is None and second["deployments"] == []


def test_trace_a_spec_follows_what_serves_else_the_latest_run(chain):
    assert [r["runId"] for r in trace(chain, "triage").runs] == ["run-1"]  # run-2 is newer but does not serve
    other = trace(chain, "other")
    assert other.matched == "spec" and other.runs == []


def test_trace_an_artifact_a_data_md5_and_a_commit(chain):
    by_artifact = trace(chain, "a2" * 32)
    assert by_artifact.matched == "artifact" and [r["runId"] for r in by_artifact.runs] == ["run-2"]
    assert [r["runId"] for r in trace(chain, "m1" * 32).runs] == ["run-1"]  # the manifest
    assert [r["runId"] for r in trace(chain, "e1" * 32).runs] == ["run-1"]  # the eval report
    by_data = trace(chain, DATA)
    assert by_data.matched == "data" and sorted(r["runId"] for r in by_data.runs) == ["run-1", "run-2"]
    by_commit = trace(chain, COMMIT_2[:7])
    assert by_commit.matched == "commit" and [r["runId"] for r in by_commit.runs] == ["run-2"]
    with pytest.raises(PermanentError, match="not a spec, run id, artifact sha256, data md5 or commit"):
        trace(chain, COMMIT_2[:6])  # a prefix under 7 characters is not a commit
    with pytest.raises(PermanentError, match="'nothing-like-it' is not a spec"):
        trace(chain, "nothing-like-it")


def test_provenance_has_one_statement_per_finished_run(chain):
    statements = provenance_statements(chain)
    assert [s["predicate"]["runDetails"]["metadata"]["invocationId"] for s in statements] == ["run-1", "run-2"]
    first = statements[0]
    assert first["subject"] == [{"name": "model/adapter.safetensors", "digest": {"sha256": "a1" * 32}}]
    deps = first["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"] == {"gitCommit": COMMIT_1} and deps[1] == {"uri": "dvc:data/triage.jsonl", "digest": {"md5": DATA}}
    assert first["predicate"]["buildDefinition"]["externalParameters"]["requestedBy"] == "ana"
    recorded = chain.last(kind="run.finished", run_id="run-1")
    assert first["predicate"]["runDetails"]["byproducts"][0] == {"name": "ledger-record", "digest": {"sha256": recorded.hash}}
