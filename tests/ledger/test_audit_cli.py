"""`ftops audit checkpoint` and `ftops audit verify` through `controller.cli.main`, on real
ledgers in a controller home, with anchors in files and in status files written here."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.cli import main
from controller.ledger import Anchor, Ledger


def make_home(root: Path, records: int = 6) -> Path:
    home = root / "home"
    ledger = Ledger(home / "ledger.db")
    for i in range(records):
        ledger.append("spec.observed", "triage", None, {"commit": f"{i:040d}"})
    ledger.close()
    return home


def head(home: Path) -> Anchor:
    return Ledger(home / "ledger.db").head()


def cut_tail(home: Path, keep: int) -> None:
    db = sqlite3.connect(str(home / "ledger.db"))
    db.execute("DROP TRIGGER events_no_delete")
    db.execute("DELETE FROM events WHERE seq > ?", (keep,))
    db.commit()
    db.close()


def write_status(home: Path, name: str, anchor: Anchor | None) -> Path:
    path = home / "status" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    status = {"name": name, "phase": "Ready", "conditions": []}
    if anchor is not None:
        status["ledgerHead"] = anchor.to_dict()
    path.write_text(json.dumps(status))
    return path


def test_checkpoint_prints_the_head(tmp_path, capsys):
    home = make_home(tmp_path)
    assert main(["audit", "checkpoint", "--home", str(home)]) == 0
    assert Anchor.from_dict(json.loads(capsys.readouterr().out)) == head(home)


def test_checkpoint_out_then_verify_anchor_catches_a_cut_off_tail(tmp_path, capsys):
    home = make_home(tmp_path)
    kept = tmp_path / "auditor" / "head.json"
    assert main(["audit", "checkpoint", "--home", str(home), "--out", str(kept)]) == 0
    assert f"wrote anchor #6" in capsys.readouterr().out
    assert Anchor.from_dict(json.loads(kept.read_text())) == head(home)
    assert main(["audit", "verify", "--home", str(home), "--anchor", str(kept)]) == 0
    assert "ledger OK: 6 records" in capsys.readouterr().out

    cut_tail(home, keep=4)
    assert main(["audit", "verify", "--home", str(home)]) == 0  # the chain alone cannot tell
    alone = capsys.readouterr().out
    assert "ledger OK: 4 records" in alone and "no anchor" in alone and "--anchor" in alone
    assert main(["audit", "verify", "--home", str(home), "--anchor", str(kept)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"ledger BROKEN at record 5: records after #4 were removed: the anchor from {kept} says #6")


def test_verify_takes_several_anchors(tmp_path, capsys):
    home = make_home(tmp_path, records=3)
    early = tmp_path / "early.json"
    main(["audit", "checkpoint", "--home", str(home), "--out", str(early)])
    ledger = Ledger(home / "ledger.db")
    ledger.append("spec.observed", "triage", None, {"commit": "later"})
    ledger.close()
    late = tmp_path / "late.json"
    main(["audit", "checkpoint", "--home", str(home), "--out", str(late)])
    capsys.readouterr()
    assert main(["audit", "verify", "--home", str(home), "--anchor", str(early), "--anchor", str(late)]) == 0
    out = capsys.readouterr().out
    assert "2 anchors" in out and f"{early} (#3)" in out and f"{late} (#4)" in out


def test_verify_picks_up_the_anchors_in_the_status_files(tmp_path, capsys):
    home = make_home(tmp_path)
    anchor = head(home)
    write_status(home, "triage", anchor)
    write_status(home, "legacy", None)  # a status from before anchors: not an anchor, not an error
    assert main(["audit", "verify", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "1 anchor" in out and str(home / "status" / "triage.json") in out
    cut_tail(home, keep=5)
    assert main(["audit", "verify", "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at record 6: records after #5 were removed: the anchor from {home / 'status' / 'triage.json'} says #6" in out


def test_a_ledger_rewritten_from_scratch_fails_against_the_status_anchor(tmp_path, capsys):
    home = make_home(tmp_path)
    write_status(home, "triage", head(home))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{home / 'ledger.db'}{suffix}").unlink(missing_ok=True)
    forged = Ledger(home / "ledger.db")
    for i in range(6):
        forged.append("spec.observed", "triage", None, {"commit": f"forged-{i}"})
    forged.close()
    assert main(["audit", "verify", "--home", str(home)]) == 1
    assert "BROKEN at record 6" in capsys.readouterr().out


def test_an_anchor_from_the_future_is_a_clear_error(tmp_path, capsys):
    home = make_home(tmp_path, records=2)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"seq": 40, "hash": "4" * 64}))
    assert main(["audit", "verify", "--home", str(home), "--anchor", str(future)]) == 1
    out = capsys.readouterr().out
    assert f"the anchor from {future} says #40" in out and "the ledger ends at #2" in out


def test_checkpoint_refuses_to_anchor_a_broken_ledger(tmp_path, capsys):
    home = make_home(tmp_path)
    kept = tmp_path / "head.json"
    main(["audit", "checkpoint", "--home", str(home), "--out", str(kept)])
    before = kept.read_text()
    cut_tail(home, keep=3)
    capsys.readouterr()
    # the anchor already in --out says #6: checkpoint will not replace it with a shorter head
    assert main(["audit", "checkpoint", "--home", str(home), "--out", str(kept)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at record 4" in out and "no anchor written" in out
    assert kept.read_text() == before


@pytest.mark.parametrize(("content", "says"), [
    (None, "no such anchor file"),
    ("{not json", "not a JSON anchor file"),
    ('{"seq": 3, "hash": "abc"}', "field 'hash' must be 64 lowercase hex digits"),
])
def test_a_bad_anchor_file_is_an_error_naming_it(tmp_path, capsys, content, says):
    home = make_home(tmp_path)
    anchor = tmp_path / "anchor.json"
    if content is not None:
        anchor.write_text(content)
    assert main(["audit", "verify", "--home", str(home), "--anchor", str(anchor)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {anchor}") and says in err


def test_a_bad_ledger_head_in_a_status_file_is_an_error_naming_it(tmp_path, capsys):
    home = make_home(tmp_path)
    status = write_status(home, "triage", None)
    status.write_text(json.dumps({"name": "triage", "ledgerHead": {"seq": "six", "hash": "0" * 64}}))
    assert main(["audit", "verify", "--home", str(home)]) == 1
    assert f"error: {status}: ledgerHead: field 'seq'" in capsys.readouterr().err


def test_no_ledger_in_home_is_an_error(tmp_path, capsys):
    for command in ("verify", "checkpoint"):
        assert main(["audit", command, "--home", str(tmp_path / "empty")]) == 1
        assert "no ledger at" in capsys.readouterr().err
