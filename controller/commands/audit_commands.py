"""`ftops trace`, `ftops audit`: reading the audit ledger, from any identifier to its whole
chain, and checking or exporting it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from controller.commands._common import _common
from controller.errors import FtopsError


def register(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="from a spec, run, artifact sha256, data md5 or commit to its whole chain")
    _common(trace)
    trace.add_argument("query")
    trace.add_argument("-o", "--output", choices=("text", "json"), default="text")
    trace.set_defaults(func=cmd_trace)

    audit = sub.add_parser("audit", help="check or export the audit ledger")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="re-check the hash chain, the anchors and every recorded artifact hash")
    _common(verify)
    verify.add_argument("--anchor", action="append", default=[], metavar="FILE",
                        help="an anchor kept outside the ledger (`audit checkpoint --out`), repeatable; "
                             "every ledgerHead in <home>/status/*.json is checked too")
    verify.set_defaults(func=cmd_audit_verify)
    checkpoint = audit_sub.add_parser("checkpoint", help="the ledger's head (seq, hash) for an auditor to keep")
    _common(checkpoint)
    checkpoint.add_argument("--out", metavar="FILE", help="write the anchor to this file (atomically) instead of stdout")
    checkpoint.set_defaults(func=cmd_audit_checkpoint)
    export = audit_sub.add_parser("export", help="in-toto provenance statements, one per model")
    _common(export)
    export.add_argument("--out", help="write to this file instead of stdout")
    export.set_defaults(func=cmd_audit_export)


def _ledger(home: str):
    from controller.ledger import open_ledger
    from controller.home import Home

    path = Home(Path(home)).ledger
    if not path.exists():
        raise FtopsError(f"no ledger at {path}: nothing has been reconciled with --home {home}")
    return open_ledger(path)


def cmd_trace(args: argparse.Namespace) -> int:
    from controller.ledger import trace

    result = trace(_ledger(args.home), args.query)
    if args.output == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{args.query}: matched as {result.matched}")
    for chain in result.runs:
        print(f"\nrun {chain['runId']} of spec {chain['spec']}")
        for label, key in (("requested by", "requestedBy"), ("data", "data"), ("submitted", "submitted"),
                           ("finished", "finished"), ("evaluated", "evaluation"), ("gate", "gate")):
            record = chain.get(key)
            print(f"  {label:<13} {_describe(key, record)}")
        for d in chain["deployments"]:
            print(f"  {'deployment':<13} #{d['seq']} {d['kind']} at {d['time']}")
    return 0


def _describe(key: str, record: dict | None) -> str:
    if record is None:
        return "-"
    p = record["payload"]
    seq = f"#{record['seq']}"
    if key == "requestedBy":
        return f"{seq} commit {p.get('commit', '')[:12]} by {p.get('author')} <{p.get('email')}>: {p.get('message', '').splitlines()[0] if p.get('message') else ''}"
    if key == "data":
        counts = p.get("counts") or {}
        review = p.get("review") or {}
        return (f"{seq} {p.get('path')} md5 {p.get('md5')} ({counts.get('train', '?')} train / {counts.get('test', '?')} test; "
                f"review {review.get('approved', '?')}/{review.get('reviewed', '?')} approved)")
    if key == "submitted":
        return f"{seq} {p.get('backend')} job {p.get('job')} image {p.get('image')}"
    if key == "finished":
        return f"{seq} {len(p.get('artifacts') or {})} artifacts, manifest sha256 {str(p.get('manifestSha256'))[:16]}…"
    if key == "evaluation":
        return f"{seq} report sha256 {str(p.get('reportSha256'))[:16]}… {json.dumps(p.get('metrics'))[:100]}"
    if key == "gate":
        return f"{seq} {'passed' if p.get('passed') else 'failed'}"
    return seq


def _status_anchors(home: str) -> dict:
    """The heads the controller recorded in its status files (`ledgerHead`), by file."""
    from controller.ledger import status_anchors
    from controller.home import Home

    return status_anchors(Home(Path(home)).status)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from controller.ledger import read_anchor_file

    ledger = _ledger(args.home)
    anchors = {**_status_anchors(args.home), **{path: read_anchor_file(path) for path in args.anchor}}
    result = ledger.verify(anchors=anchors)
    if not result.ok:
        print(f"ledger BROKEN at record {result.first_bad_seq}: {result.problem}")
        return 1
    print(f"ledger OK: {result.checked} records, chain and artifact hashes match")
    if anchors:
        kept = ", ".join(f"{where} (#{anchor.seq})" for where, anchor in anchors.items())
        print(f"the chain matches {len(anchors)} {'anchor' if len(anchors) == 1 else 'anchors'}: {kept}")
    else:
        print("note: no anchor was given, so records removed from the end of the ledger would not show; "
              "keep one with `ftops audit checkpoint --out FILE` and pass it with --anchor FILE (docs/audit.md)")
    return 0


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Take the head first, then verify: every record up to the head is checked, and a ledger
    that is already broken (against the status anchors or the anchor already in --out) is
    never anchored, so the auditor's file cannot bless a cut-off tail."""
    from controller.fsutil import write_json_atomic
    from controller.ledger import read_anchor_file

    ledger = _ledger(args.home)
    head = ledger.head()
    anchors = _status_anchors(args.home)
    if args.out and Path(args.out).exists():
        anchors[args.out] = read_anchor_file(args.out)
    result = ledger.verify(check_artifacts=False, anchors=anchors)
    if not result.ok:
        print(f"ledger BROKEN at record {result.first_bad_seq}: {result.problem}; no anchor written")
        return 1
    if not args.out:
        print(json.dumps(head.to_dict()))
        return 0
    write_json_atomic(args.out, head.to_dict())
    print(f"wrote anchor #{head.seq} (hash {head.hash}) to {args.out}: keep it where the ledger's owners cannot write, "
          f"and check with `ftops audit verify --anchor {args.out}`")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from controller.ledger import provenance_statements

    statements = provenance_statements(_ledger(args.home))
    text = json.dumps(statements, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {len(statements)} provenance statement(s) to {args.out}")
    else:
        print(text)
    return 0
