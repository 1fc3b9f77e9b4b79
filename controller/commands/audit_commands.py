"""`ftops trace`, `ftops audit`: reading the audit ledger, from any identifier to its whole
chain, and checking or exporting it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from controller.commands._observed import gate_lines, metrics_text, summary
from controller.errors import FtopsError
from controller.output import add_output_flag, dump, fmt
from controller.settings import uses


def register(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="from a spec, run, artifact sha256, data md5 or commit to its whole chain")
    uses(trace, "home")
    trace.add_argument("query")
    add_output_flag(trace)
    trace.set_defaults(func=cmd_trace)

    audit = sub.add_parser("audit", help="check or export the audit ledger")
    uses(audit, "home")  # `ftops audit --home H verify` (the README's own order) works too
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="re-check the hash chain, the anchors and every recorded artifact hash")
    uses(verify, "home")
    verify.add_argument("--anchor", action="append", default=[], metavar="FILE",
                        help="an anchor kept outside the ledger (`audit checkpoint --out`), repeatable; "
                             "every ledgerHead in <home>/status/*.json is checked too")
    verify.set_defaults(func=cmd_audit_verify)
    checkpoint = audit_sub.add_parser("checkpoint", help="the ledger's head (seq, hash) for an auditor to keep")
    uses(checkpoint, "home")
    checkpoint.add_argument("--out", metavar="FILE", help="write the anchor to this file (atomically) instead of stdout")
    checkpoint.set_defaults(func=cmd_audit_checkpoint)
    export = audit_sub.add_parser("export", help="in-toto provenance statements, one per model")
    uses(export, "home")
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
    format_ = fmt(args)
    if format_ in ("json", "yaml"):
        print(dump(result.to_dict(), format_))
        return 0
    if format_ == "name":
        for chain in result.runs:
            print(f"run/{chain['runId']}")
        return 0
    print(f"{args.query}: matched as {result.matched}")
    for chain in result.runs:
        print(f"\nrun {chain['runId']} of spec {chain['spec']}")
        for label, key in (("requested by", "requestedBy"), ("data", "data"), ("submitted", "submitted"),
                           ("finished", "finished"), ("evaluated", "evaluation"), ("gate", "gate")):
            print(f"  {label:<13} {_describe(key, chain.get(key))}")
            record = chain.get(key)
            if key == "gate" and record is not None:
                for verdict, metric, kind, value, threshold in gate_lines(record["payload"]):
                    print(f"  {'':<13}   {verdict}  {metric:<28} {kind:<9} value {value:>8}  threshold {threshold:>8}")
        for d in chain["deployments"]:
            print(f"  {'deployment':<13} #{d['seq']} {d['time']}: {summary(d['kind'], d['payload'])}")
    return 0


def _describe(key: str, record: dict | None) -> str:
    """One chain link for people: the record's number and what it says, metrics whole (the
    full records are in `-o json`)."""
    if record is None:
        return "-"
    seq = f"#{record['seq']}"
    p = record["payload"]
    if key == "requestedBy":
        return (f"{seq} commit {p.get('commit', '')[:12]} by {p.get('author')} <{p.get('email')}>: "
                f"{p.get('message', '').splitlines()[0] if p.get('message') else ''}")
    if key == "finished":
        return f"{seq} {len(p.get('artifacts') or {})} artifacts, manifest sha256 {p.get('manifestSha256')}"
    if key == "evaluation":
        return f"{seq} report sha256 {p.get('reportSha256')}: {metrics_text(p.get('metrics') or {})}"
    return f"{seq} {summary(record['kind'], p)}"


def _status_anchors(home: str) -> dict:
    """The heads the controller recorded in its status files (`ledgerHead`), by file."""
    from controller.ledger import status_anchors
    from controller.home import Home

    return status_anchors(Home(Path(home)).status)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from controller.ledger import read_anchor_file

    ledger = _ledger(args.home)
    anchors = {**_status_anchors(args.home),  # the demo calls this in-process, without --anchor
               **{path: read_anchor_file(path) for path in getattr(args, "anchor", None) or []}}
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
