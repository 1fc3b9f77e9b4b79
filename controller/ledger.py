"""The audit ledger: an append-only, hash-chained record of every step, in SQLite (WAL).

Auditors trace a served model back to the exact data and the commit that asked for it. So
every fact is recorded when it happens, never reconstructed later, and each record carries
the hash of the one before it: changing, deleting or reordering any record breaks the chain,
and `ftops audit verify` names the first record that no longer matches. SQLite triggers
refuse UPDATE and DELETE, so even a bug in ftops cannot rewrite history through this module.

A chain alone cannot show that its *last* records were removed: cut the tail off and every
remaining link still verifies. So the head (seq and hash of the last record) is an `Anchor`
kept outside the ledger: an `anchor_sink` is called after every append (`AnchorFile` writes a
file; the reconciler puts the head into each spec's status as `ledgerHead`), an auditor keeps
`ftops audit checkpoint`, and `verify(anchors=...)` refuses a ledger that ends before an
anchor or whose record at the anchor's seq has another hash.

Record: {seq, time, kind, spec, run_id, payload, prev_hash, hash} where
hash = sha256(canonical JSON of every other field). Kinds used by the reconciler:
spec.observed, data.versioned, data.prepared, run.submitted, run.finished, eval.reported,
gate.decided, deploy.promoted, deploy.rolled_back, spec.pruned, spec.stalled.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from controller.errors import PermanentError
from controller.fsutil import read_json, sha256_file, write_json_atomic

GENESIS = "0" * 64
HEAD_KEY = "ledgerHead"  # the key under which a status (file or FineTune CR) carries an Anchor

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT,
    run_id TEXT,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    key TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events(kind, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_spec ON events(spec, seq);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, seq);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the ftops ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the ftops ledger is append-only'); END;
"""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(seq: int, time: str, kind: str, spec: str | None, run_id: str | None, payload: Any, prev_hash: str) -> str:
    body = canonical({"seq": seq, "time": time, "kind": kind, "spec": spec, "runId": run_id, "payload": payload, "prev": prev_hash})
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    seq: int
    time: str
    kind: str
    spec: str | None
    run_id: str | None
    payload: dict
    prev_hash: str
    hash: str

    def to_dict(self) -> dict:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "spec": self.spec,
            "runId": self.run_id,
            "payload": self.payload,
            "prevHash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Anchor:
    """The ledger's head at one moment: the seq and hash of its last record. Kept outside the
    ledger, it pins everything up to that record: a ledger that ends before `seq`, or whose
    record `seq` has another hash, is not the one the anchor was taken from. The empty ledger's
    anchor is (0, GENESIS), which every ledger satisfies."""

    seq: int
    hash: str

    def to_dict(self) -> dict:
        return {"seq": self.seq, "hash": self.hash}

    @classmethod
    def from_dict(cls, data: object, where: str = "anchor") -> "Anchor":
        """Parse `{seq, hash}`; bad input raises PermanentError naming `where` and the field."""
        if not isinstance(data, dict):
            raise PermanentError(f"{where}: an anchor must be an object {{\"seq\": <int>, \"hash\": <sha256 hex>}}, "
                                 f"not {type(data).__name__}")
        seq, digest = data.get("seq"), data.get("hash")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise PermanentError(f"{where}: field 'seq' must be a record number of at least 0, not {seq!r}")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise PermanentError(f"{where}: field 'hash' must be 64 lowercase hex digits (a sha256), not {digest!r}")
        if seq == 0 and digest != GENESIS:
            raise PermanentError(f"{where}: an anchor at seq 0 (the empty ledger) must have hash {GENESIS}")
        return cls(seq, digest)


AnchorSink = Callable[[Anchor], None]
"""Called with the new head after every successful append, under the ledger's lock (so one
process hands its sink heads in order). It keeps the anchor outside the ledger file."""


class AnchorFile:
    """An `AnchorSink` that keeps the head in a JSON file `{seq, hash}`, written atomically (a
    reader or a restart after kill -9 sees the old anchor or the new one, never half). It never
    moves backwards: a head older than the file's (another process appended meanwhile) is
    skipped, because the ledger only grows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, anchor: Anchor) -> None:
        kept = read_json(self.path)
        if isinstance(kept, dict) and isinstance(kept.get("seq"), int) and kept["seq"] >= anchor.seq:
            return
        write_json_atomic(self.path, anchor.to_dict())

    def read(self) -> Anchor:
        return read_anchor_file(self.path)


def read_anchor_file(path: str | Path) -> Anchor:
    """An anchor file (`{seq, hash}`, as `ftops audit checkpoint --out` writes) or any JSON
    object carrying one under `ledgerHead` (a saved status). Clear errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PermanentError(f"{path}: no such anchor file; write one with `ftops audit checkpoint --out {path}`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentError(f"{path}: not a JSON anchor file ({exc}); it should hold {{\"seq\": ..., \"hash\": ...}}") from None
    if isinstance(data, dict) and HEAD_KEY in data:
        return Anchor.from_dict(data[HEAD_KEY], f"{path}: {HEAD_KEY}")
    return Anchor.from_dict(data, str(path))


def status_anchors(status_dir: str | Path) -> dict[str, Anchor]:
    """The anchors the controller recorded in its status files (`<home>/status/*.json`, key
    `ledgerHead`), by file. Files without the key are not anchors and are left out; a key that
    is present but malformed is an error naming the file and field."""
    found: dict[str, Anchor] = {}
    for path in sorted(Path(status_dir).glob("*.json")):
        data = read_json(path)
        if isinstance(data, dict) and HEAD_KEY in data:
            found[str(path)] = Anchor.from_dict(data[HEAD_KEY], f"{path}: {HEAD_KEY}")
    return found


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""
    anchors: int = 0  # how many anchors the chain was compared against (0: a cut-off tail would not show)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "firstBadSeq": self.first_bad_seq, "problem": self.problem,
                "anchors": self.anchors}


class Ledger:
    """One SQLite file. Safe to open from several processes (WAL, immediate transactions)."""

    def __init__(self, path: str | Path, before_write: Callable[[], None] | None = None,
                 anchor_sink: AnchorSink | None = None) -> None:
        """`before_write` runs before every append: in a cluster it is the leader-election
        fence, so a paused or deposed leader can never add a record. `anchor_sink` gets the new
        head after every append, to keep it outside this file (see `Anchor`)."""
        self.path = Path(path)
        self.before_write = before_write
        self.anchor_sink = anchor_sink
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a record the controller acted on survives power loss
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- writing -----------------------------------------------------------------------------

    def append(self, kind: str, spec: str | None = None, run_id: str | None = None, payload: dict | None = None,
               key: str | None = None) -> Event:
        """Append one record, chained to the last. Durable when this returns. With `key`, a
        second record of the same kind and key is refused by the database (see append_once).
        Then the anchor sink gets the new head; if it raises, the record is still durable and
        the error reaches the caller (the anchor was not kept; the next append keeps it)."""
        payload = payload or {}
        if self.before_write is not None:
            self.before_write()
        canonical(payload)  # refuse NaN and non-JSON values before touching the file
        time = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
                digest = record_hash(seq, time, kind, spec, run_id, payload, prev)
                self._db.execute(
                    "INSERT INTO events(seq, time, kind, spec, run_id, payload, prev_hash, hash, key) VALUES (?,?,?,?,?,?,?,?,?)",
                    (seq, time, kind, spec, run_id, canonical(payload), prev, digest, key),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if self.anchor_sink is not None:
                self.anchor_sink(Anchor(seq, digest))
        return Event(seq, time, kind, spec, run_id, payload, prev, digest)

    def append_once(self, kind: str, spec: str | None, run_id: str | None, payload: dict, key: str) -> Event:
        """Append unless a record of `kind` with the same idempotency `key` exists. A step that
        is re-run after a crash records its fact exactly once."""
        existing = self.find_one(kind=kind, key=key)
        if existing is not None:
            return existing
        try:
            return self.append(kind, spec, run_id, payload, key=key)
        except sqlite3.IntegrityError:  # another process recorded it between our read and write
            found = self.find_one(kind=kind, key=key)
            assert found is not None
            return found

    # -- reading -----------------------------------------------------------------------------

    def events(self, spec: str | None = None, run_id: str | None = None, kind: str | None = None,
               after: int = 0) -> Iterator[Event]:
        clauses, params = ["seq > ?"], [after]
        for column, value in (("spec", spec), ("run_id", run_id), ("kind", kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        query = f"SELECT seq, time, kind, spec, run_id, payload, prev_hash, hash FROM events WHERE {' AND '.join(clauses)} ORDER BY seq"
        for row in self._db.execute(query, params):
            yield Event(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7])

    def find_one(self, kind: str, key: str) -> Event | None:
        row = self._db.execute(
            "SELECT seq, time, kind, spec, run_id, payload, prev_hash, hash FROM events WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return Event(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7]) if row else None

    def last(self, kind: str | None = None, spec: str | None = None, run_id: str | None = None) -> Event | None:
        clauses, params = ["1=1"], []
        for column, value in (("spec", spec), ("run_id", run_id), ("kind", kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        row = self._db.execute(
            f"SELECT seq, time, kind, spec, run_id, payload, prev_hash, hash FROM events WHERE {' AND '.join(clauses)} "
            "ORDER BY seq DESC LIMIT 1", params).fetchone()
        return Event(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7]) if row else None

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def head(self) -> Anchor:
        """The anchor of the last record now: (0, GENESIS) for an empty ledger."""
        row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return Anchor(row[0], row[1]) if row else Anchor(0, GENESIS)

    # -- verification --------------------------------------------------------------------------

    def verify(self, check_artifacts: bool = True, anchors: Mapping[str, Anchor] | None = None) -> VerifyResult:
        """Recompute every hash and link; compare the chain with every anchor (keyed by where
        it was kept, for the message); then re-hash every artifact the ledger recorded. Names
        the first record that does not match. Without anchors a removed tail cannot show:
        the records that remain still link to each other."""
        anchors = dict(anchors or {})
        pinned: dict[int, list[tuple[str, Anchor]]] = {}
        for where, anchor in anchors.items():
            pinned.setdefault(anchor.seq, []).append((where, anchor))
        prev = GENESIS
        checked = 0
        for row in self._db.execute("SELECT seq, time, kind, spec, run_id, payload, prev_hash, hash FROM events ORDER BY seq"):
            seq, time, kind, spec, run_id, payload_text, prev_hash, digest = row
            checked += 1
            if seq != checked:
                return VerifyResult(False, checked, seq, f"record {seq} follows record {checked - 1}: a record is missing")
            if prev_hash != prev:
                return VerifyResult(False, checked, seq, f"record {seq} does not link to record {seq - 1} (prev_hash differs)")
            try:
                payload = json.loads(payload_text)
            except json.JSONDecodeError:
                return VerifyResult(False, checked, seq, f"record {seq} payload is not JSON (edited)")
            if record_hash(seq, time, kind, spec, run_id, payload, prev_hash) != digest:
                return VerifyResult(False, checked, seq, f"record {seq} ({kind}) content does not match its hash (edited)")
            for where, anchor in pinned.get(seq, ()):
                if anchor.hash != digest:
                    return VerifyResult(False, checked, seq, (
                        f"record {seq} has hash {digest} but the anchor from {where} says #{seq} with hash {anchor.hash}: "
                        f"the ledger was rewritten up to record {seq}, or the anchor belongs to another ledger"), len(anchors))
            prev = digest
        beyond = max(anchors.items(), key=lambda item: item[1].seq, default=None)
        if beyond is not None and beyond[1].seq > checked:
            where, anchor = beyond
            return VerifyResult(False, checked, checked + 1, (
                f"records after #{checked} were removed: the anchor from {where} says #{anchor.seq} with hash {anchor.hash}, "
                f"but the ledger ends at #{checked} (if that anchor was not taken from this ledger, verify against one that was)"),
                len(anchors))
        if check_artifacts:
            stores: dict[str, Any] = {}
            for event in self.events(kind="run.finished"):
                root = event.payload.get("outputDir")
                if not root:
                    continue
                for rel, expected in (event.payload.get("artifacts") or {}).items():
                    where, actual = _artifact_sha256(str(root), rel, stores)
                    if actual is None:
                        return VerifyResult(False, checked, event.seq, f"artifact {where} recorded in record {event.seq} is missing",
                                            len(anchors))
                    if actual != expected:
                        return VerifyResult(False, checked, event.seq,
                                            f"artifact {where} no longer matches the sha256 recorded in record {event.seq}", len(anchors))
        return VerifyResult(True, checked, anchors=len(anchors))


def _artifact_sha256(root: str, rel: str, stores: dict[str, Any]) -> tuple[str, str | None]:
    """(where, sha256 or None when missing) of a run's file: a local directory, or an object-store
    URI (s3://...), read through the artifact store in chunks. A store that cannot be reached
    raises TemporaryError: "could not check" is not "does not match"."""
    if "://" not in root:
        path = Path(root) / rel
        return str(path), sha256_file(path) if path.exists() else None
    import hashlib

    from controller.artifacts import open_store

    store = stores.get(root)
    if store is None:
        store = stores[root] = open_store(root)
    uri = store.join(root, rel)
    if not store.exists(uri):
        return uri, None
    digest = hashlib.sha256()
    with store.open(uri) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return uri, digest.hexdigest()


def open_ledger(path: str | Path) -> Ledger:
    try:
        return Ledger(path)
    except sqlite3.DatabaseError as exc:
        raise PermanentError(f"{path}: not a readable ftops ledger ({exc}); restore it from backup, never delete it") from None


# ----------------------------------------------------------------------------- trace


@dataclass
class Trace:
    """What an auditor asked about and the chain of records that answers it."""

    query: str
    matched: str  # spec | run | artifact | data | commit
    runs: list[dict]

    def to_dict(self) -> dict:
        return {"query": self.query, "matched": self.matched, "runs": self.runs}


def _run_chain(ledger: Ledger, run: str) -> dict:
    """Backwards from one run: the commit that asked for it, its data, the run, its evaluation,
    its gate decision and every deployment transition."""
    events = list(ledger.events(run_id=run))
    submitted = next((e for e in events if e.kind == "run.submitted"), None)
    spec = submitted.spec if submitted else (events[0].spec if events else None)
    commit = submitted.payload.get("commit") if submitted else None
    data_md5 = submitted.payload.get("dataMd5") if submitted else None
    observed = None
    data = None
    if spec is not None:
        for e in ledger.events(spec=spec, kind="spec.observed"):
            if e.payload.get("commit") == commit:
                observed = e
        for e in ledger.events(spec=spec, kind="data.versioned"):
            if e.payload.get("md5") == data_md5:
                data = e
    deploys = [e for e in ledger.events(spec=spec) if e.kind.startswith("deploy.") and e.run_id == run] if spec else []
    pick = lambda kind: next((e.to_dict() for e in reversed(events) if e.kind == kind), None)  # noqa: E731
    return {
        "runId": run,
        "spec": spec,
        "requestedBy": observed.to_dict() if observed else None,
        "data": data.to_dict() if data else None,
        "submitted": submitted.to_dict() if submitted else None,
        "finished": pick("run.finished"),
        "evaluation": pick("eval.reported"),
        "gate": pick("gate.decided"),
        "deployments": [e.to_dict() for e in deploys],
    }


def trace(ledger: Ledger, query: str) -> Trace:
    """Follow the chain for a spec name (its served run, else its latest run), a run id, an
    artifact sha256, a data md5 (forwards: every run trained on it) or a commit sha."""
    runs = {e.run_id for e in ledger.events(kind="run.submitted")}
    if query in runs:
        return Trace(query, "run", [_run_chain(ledger, query)])
    specs = {e.spec for e in ledger.events(kind="spec.observed")}
    if query in specs:
        served = ledger.last(kind="deploy.promoted", spec=query)
        latest = served or ledger.last(kind="run.submitted", spec=query)
        return Trace(query, "spec", [_run_chain(ledger, latest.run_id)] if latest and latest.run_id else [])
    found: dict[str, str] = {}
    for e in ledger.events(kind="run.finished"):
        if query in (e.payload.get("artifacts") or {}).values() or query == e.payload.get("manifestSha256"):
            found.setdefault(e.run_id, "artifact")
    for e in ledger.events(kind="eval.reported"):
        if query == e.payload.get("reportSha256"):
            found.setdefault(e.run_id, "artifact")
    for e in ledger.events(kind="run.submitted"):
        if query == e.payload.get("dataMd5"):
            found.setdefault(e.run_id, "data")
        elif len(query) >= 7 and str(e.payload.get("commit", "")).startswith(query):
            found.setdefault(e.run_id, "commit")
    if not found:
        raise PermanentError(f"'{query}' is not a spec, run id, artifact sha256, data md5 or commit in the ledger")
    kinds = set(found.values())
    return Trace(query, kinds.pop() if len(kinds) == 1 else "mixed", [_run_chain(ledger, run) for run in found])


def provenance_statements(ledger: Ledger) -> list[dict]:
    """One in-toto v1 Statement (SLSA provenance v1 predicate) per finished run: the subject is
    the model artifacts by sha256; materials are the spec commit, the data md5 and base model."""
    out = []
    for finished in ledger.events(kind="run.finished"):
        chain = _run_chain(ledger, finished.run_id or "")
        submitted = (chain["submitted"] or {}).get("payload", {})
        subjects = [{"name": name, "digest": {"sha256": digest}}
                    for name, digest in sorted((finished.payload.get("artifacts") or {}).items())]
        deps = [{"uri": f"git+commit:{submitted.get('commit')}", "digest": {"gitCommit": submitted.get("commit")}},
                {"uri": f"dvc:{(chain['data'] or {}).get('payload', {}).get('path', '')}", "digest": {"md5": submitted.get("dataMd5")}},
                {"uri": submitted.get("baseModel"), "digest": {"gitCommit": submitted.get("baseModelRevision")} if submitted.get("baseModelRevision") else {}}]
        out.append({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": subjects,
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": "https://ftops.dev/FineTune/v1alpha1",
                    "externalParameters": {"spec": chain["spec"], "runId": finished.run_id,
                                           "requestedBy": ((chain["requestedBy"] or {}).get("payload") or {}).get("author")},
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {"id": f"https://ftops.dev/backend/{submitted.get('backend')}"},
                    "metadata": {"invocationId": finished.run_id, "finishedOn": finished.time},
                    "byproducts": [{"name": "ledger-record", "digest": {"sha256": finished.hash}},
                                   *([{"name": "gate", "content": (chain["gate"] or {}).get("payload")}] if chain["gate"] else [])],
                },
            },
        })
    return out
