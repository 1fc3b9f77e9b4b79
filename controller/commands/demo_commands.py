"""`ftops demo`: the main job end to end on this machine (local backend, tiny model, CPU).

1. Build a GitOps repo with `git init`: the tiny model, a synthetic ticket dataset versioned
   with DVC to a local remote, the expert's reviews, a small document corpus and one spec.
2. Run the controller until the spec is Ready: DVC pull + prepare -> LoRA training -> eval ->
   gate -> serving (a real HTTP server).
3. Ask the served model a question only the corpus answers; print the answer and its citation.
4. Print `ftops status` and `ftops trace`.
5. Commit a data-quality regression (every label scrambled by a bad export; the reviewer
   approved it anyway) and reconcile again: the new run fails its gate, the first model keeps
   serving, and the ledger shows both.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

QUESTION = "How many business days does a refund take to show up?"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the main job end to end on this machine (tiny model, CPU)")
    demo.add_argument("--dir", default=".demo", help="where the demo repo and controller state go (recreated)")
    demo.add_argument("--examples", type=int, default=500, help="synthetic training examples")
    demo.add_argument("--keep-serving", action="store_true", help="leave the model server running at the end")
    demo.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _settle(reconciler, spec: str, timeout: float = 900) -> object:
    """Reconcile until nothing is waiting; print each change of phase as it happens."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        result = reconciler.reconcile_once()
        status = result.statuses[spec]
        line = f"    {status.phase:<10} " + "; ".join(
            f"{c.type}={c.reason}" for c in status.conditions if c.type not in ("Ready",))
        if line != last:
            print(line, flush=True)
            last = line
        if result.requeue_after is None or time.monotonic() > deadline:
            return status
        time.sleep(min(result.requeue_after, 2.0))


def _ask(url: str) -> dict:
    from openai import OpenAI

    from controller.tiny.task import SYSTEM_PROMPT

    client = OpenAI(base_url=f"{url}/v1", api_key="demo")
    # The same system prompt the model was fine-tuned with; the server appends the retrieved sources to it.
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model="support-triage", messages=messages)
    data = reply.model_dump()
    return {"answer": data["choices"][0]["message"]["content"], "citations": data.get("citations"),
            "run": data.get("system_fingerprint")}


def cmd_demo(args: argparse.Namespace) -> int:
    from controller import demo
    from controller.backends.local import LocalBackend
    from controller.commands.audit_commands import cmd_audit_verify, cmd_trace
    from controller.commands.status_commands import cmd_status
    from controller.data import dvc
    from controller.reconcile import ControllerConfig, Reconciler
    from controller.serve.deploy import LocalServing

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not ours
    started = time.monotonic()
    root = Path(args.dir).resolve()
    if root.exists():
        shutil.rmtree(root)
    home = root / "home"
    _say(f"Building a GitOps repo in {root / 'repo'} (tiny Llama, {args.examples} synthetic tickets in DVC, reviews, corpus)")
    repo = demo.build(root / "repo", root / "dvc-remote", examples=args.examples)
    print(f"    spec: {repo.spec_path.relative_to(root)}\n    DVC remote: {repo.remote}")

    serving = LocalServing(home / "store")
    reconciler = Reconciler(ControllerConfig(repo=str(repo.root), home=home), LocalBackend(home / "runs"), deployer=serving)
    _say("Reconciling main: data -> train (LoRA, CPU) -> evaluate -> gate -> serve")
    status = _settle(reconciler, demo.SPEC_NAME)
    if status.phase != "Ready":
        print(f"error: the spec did not become Ready: {json.dumps(status.to_dict(), indent=2)}", file=sys.stderr)
        return 1
    first_run = status.run_id
    current = serving.current(demo.SPEC_NAME)
    assert current is not None and current.url is not None
    url = current.url

    _say(f"Asking the served model (OpenAI API at {url}): {QUESTION!r}")
    reply = _ask(url)
    print(f"    answer (what the fine-tuned classifier generated): {reply['answer']}")
    for c in reply["citations"] or []:
        print(f"    citation [{c['index']}]: {c['path']} ({c['chunkId']}, score {c['score']:.2f})")
    print(f"    served by run {reply['run']}")

    home_args = argparse.Namespace(home=str(home), output="table")
    _say(f"ftops status --home {home}")
    cmd_status(home_args)
    _say(f"ftops trace {demo.SPEC_NAME} --home {home}")
    cmd_trace(argparse.Namespace(home=str(home), query=demo.SPEC_NAME, output="text"))

    _say("A second commit: a bad export scrambles every label; the reviewer approves it anyway")
    demo.degrade_labels(repo.root)
    dvc.version(repo.root, demo.DATA_PATH)
    demo.write_reviews(repo.root, demo.SPEC_NAME)
    demo.commit(repo.root, "Re-export tickets from the new helpdesk")
    status = _settle(reconciler, demo.SPEC_NAME)
    gate = status.condition("GatePassed")
    print(f"    new run {status.run_id}: GatePassed={gate.status if gate else '-'} ({gate.message if gate else ''})")
    reply = _ask(url)
    print(f"    still served by run {reply['run']} (the first run was {first_run})")
    _say(f"ftops status --home {home}")
    cmd_status(home_args)
    _say(f"ftops audit verify --home {home}")
    code = cmd_audit_verify(argparse.Namespace(home=str(home)))
    if not args.keep_serving:
        serving.stop(demo.SPEC_NAME)
        print("\n    (the demo server is stopped; run with --keep-serving to keep it)")
    ok = code == 0 and status.serving_run_id == first_run and reply["run"] == first_run and gate is not None and gate.status == "False"
    _say(f"Demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s. Explore: ftops status|get|trace|audit --home {home}")
    return 0 if ok else 1
