"""`ftops demo`: the guide's story end to end on this machine (local backend, tiny model, CPU).

1. Build a GitOps repo with `git init`: the tiny model, support tickets versioned with DVC to a
   local remote (each names the knowledge-base article that answers it), the expert's reviews,
   the knowledge base and one spec that trains retrieval-aware (RAFT) and serves behind retrieval.
2. Run the controller until the spec is Ready: DVC pull + prepare (the training prompts rendered
   with retrieved articles) -> LoRA training -> evaluation of the served system (retrieval +
   prompt + model) -> gate -> serving (a real HTTP server).
3. Ask the served model tickets that no test uses, through the OpenAI SDK. Each answer is checked:
   valid against the spec's format schema, the right route, the article that answers it cited by
   the model (not just found by the retriever), and that article's passage, with its fact, in the
   response.
4. A corpus-only commit changes a fact (the refund time): `ftops plan` says re-evaluate, the
   controller evaluates the same run on the new corpus (no retraining) and redeploys it, and the
   served answer now carries the new refund time.
5. A data-quality regression (every route scrambled by a bad export; the reviewer approved it
   anyway): the new run fails its gate and the previous run keeps serving.
6. `ftops status`, `ftops trace`, `ftops audit verify`.

Every answer shown is checked; the demo exits 1 if one is wrong or a step did not do what it says.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

from controller import exitcodes

DEMO_SEED = 20261201
"""Seed of the tickets the demo asks: none of them is in its training data or in any test."""
REFUND_ARTICLE = "refunds.md"
NEW_REFUND_TIME = "10 business days"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the main job end to end on this machine (tiny model, CPU)")
    demo.add_argument("--dir", default=".demo", help="where the demo repo and controller state go (recreated)")
    from controller.demo import EXAMPLES

    demo.add_argument("--examples", type=int, default=EXAMPLES, help="synthetic training examples")
    demo.add_argument("--questions", type=int, default=6, help="fresh tickets asked of the served model")
    demo.add_argument("--keep-serving", action="store_true", help="leave the model server running at the end")
    demo.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _settle(reconciler, spec: str, timeout: float = 1200) -> object:
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


class Checker:
    """Asks the served model and checks each answer against the corpus it serves from."""

    def __init__(self, url: str, corpus: Path, wrong: list[str]) -> None:
        import jsonschema
        from openai import OpenAI

        from controller.tiny.task import RAG_ANSWER_SCHEMA

        self.client = OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=2, timeout=120)
        self.corpus = corpus
        self.validator = jsonschema.Draft202012Validator(RAG_ANSWER_SCHEMA)
        self.wrong = wrong

    def ask(self, example: dict) -> dict:
        """Ask one ticket (the spec's system prompt and the ticket); print and check the answer:
        valid against the format schema, the right route, the model citing the article that holds
        the fact, and the response carrying that article's passage as it is in the corpus now."""
        messages = example["messages"][:-1]
        expected = json.loads(example["messages"][-1]["content"])
        source = expected["source"]
        article = " ".join((self.corpus / source).read_text().split())
        reply = self.client.chat.completions.create(model="support-triage", messages=messages).model_dump()
        text = reply["choices"][0]["message"]["content"]
        problems = []
        try:
            answer = json.loads(text)
            errors = [e.message for e in self.validator.iter_errors(answer)]
        except json.JSONDecodeError as exc:
            answer, errors = None, [f"not JSON ({exc.msg})"]
        if errors:
            problems.append("invalid: " + "; ".join(errors))
        elif answer is not None:
            if answer["label"] != expected["label"]:
                problems.append(f"routed to {answer['label']}, not {expected['label']}")
            if answer["source"] != source:
                problems.append(f"cites {answer['source']}, the answer is in {source}")
        cited = [c for c in reply.get("citations") or [] if c.get("retrieved")]
        passage = str(cited[0].get("text", "")) if cited else ""
        if not problems and ([c["path"] for c in cited] != [source] or not passage or passage not in article):
            problems.append(f"the response cites {[c['path'] for c in cited]}, not the passage of {source}")
        ticket = messages[-1]["content"]
        print(f"    ticket: {ticket}\n    answer: {text}  [{'ok' if not problems else 'WRONG: ' + '; '.join(problems)}]")
        if passage:
            print(f"    cited:  [{source}] {passage}")
        if problems:
            self.wrong.append(f"{ticket!r}: {'; '.join(problems)}")
        return {"answer": answer, "run": reply.get("system_fingerprint"), "ok": not problems, "passage": passage}


def _plan(repo: Path) -> list[str]:
    """What `ftops plan` says the last commit does (the same decision the controller takes)."""
    from controller.catalog import load_operator_config
    from controller.plan import plan_change
    from controller.render import template_version
    from controller.source import GitSource, SpecCache, corpus_version, load_specs_at

    from controller import demo

    operator = load_operator_config(None)
    source = GitSource(repo)
    base, head = source.resolve("HEAD~1"), source.resolve("HEAD")
    cache = SpecCache()
    specs = {sha: load_specs_at(source, sha, cache, sorted(operator.gpus)) for sha in (base, head)}
    path = f"specs/{demo.SPEC_NAME}.yaml"
    corpora = {path: (corpus_version(source, base, demo.CORPUS), corpus_version(source, head, demo.CORPUS))}
    plan = plan_change(specs[base], specs[head], operator, template_version(), base, head, corpora)
    return [f"{a.kind}: {a.reason}" for p in plan.changed() for a in p.actions]


def _tickets(n: int) -> list[dict]:
    from controller.tiny.task import LABELS, make_rag_example

    rng = random.Random(DEMO_SEED)
    return [make_rag_example(LABELS[i % len(LABELS)], rng) for i in range(n)]


def _refund_ticket() -> dict:
    from controller.tiny.task import make_rag_example

    return make_rag_example("billing", random.Random(DEMO_SEED + 1))


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
    _say(f"Building a GitOps repo in {root / 'repo'} (tiny Llama, {args.examples} support tickets in DVC, reviews, "
         "knowledge base)")
    repo = demo.build(root / "repo", root / "dvc-remote", examples=args.examples)
    print(f"    spec: {repo.spec_path.relative_to(root)}\n    DVC remote: {repo.remote}")
    failures: list[str] = []

    serving = LocalServing(home / "store")
    reconciler = Reconciler(ControllerConfig(repo=str(repo.root), home=home), LocalBackend(home / "runs"), deployer=serving)
    _say("Reconciling main: data (training prompts rendered with retrieved articles) -> train (LoRA, CPU) -> "
         "evaluate the served system -> gate -> serve")
    status = _settle(reconciler, demo.SPEC_NAME)
    if status.phase != "Ready":
        print(f"error: the spec did not become Ready: {json.dumps(status.to_dict(), indent=2)}", file=sys.stderr)
        return exitcodes.FAILURE
    first_run = status.run_id
    current = serving.current(demo.SPEC_NAME)
    assert current is not None and current.url is not None
    checker = Checker(current.url, repo.root / demo.CORPUS, failures)

    _say(f"Asking the served model (OpenAI API at {current.url}) {args.questions} tickets no test has seen")
    for example in _tickets(args.questions):
        checker.ask(example)

    from controller.tiny.task import FACTS

    refund = _refund_ticket()
    _say(f"A corpus-only commit: {REFUND_ARTICLE} now says refunds take {NEW_REFUND_TIME} (it said "
         f"{FACTS[REFUND_ARTICLE]})")
    checker.ask(refund)
    demo.write_corpus(repo.root, overrides={REFUND_ARTICLE: NEW_REFUND_TIME})
    demo.commit(repo.root, f"Refunds now take {NEW_REFUND_TIME}")
    for line in _plan(repo.root):
        print(f"    ftops plan: {line}")
    status = _settle(reconciler, demo.SPEC_NAME)
    current = serving.current(demo.SPEC_NAME)
    if status.run_id != first_run or status.phase != "Ready" or current is None or current.url is None:
        failures.append(f"after the corpus commit run {first_run} should serve again, re-evaluated; "
                        f"status {status.phase}, run {status.run_id}")
    else:
        reply = Checker(current.url, repo.root / demo.CORPUS, failures).ask(refund)
        if NEW_REFUND_TIME not in reply["passage"]:
            failures.append(f"the cited passage does not say {NEW_REFUND_TIME}: {reply['passage']!r}")
        print(f"    the same run {reply['run']} (not retrained) now answers with the new refund time")

    home_args = argparse.Namespace(home=str(home), output="table")
    _say(f"ftops status --home {home}")
    cmd_status(home_args)
    _say(f"ftops trace {demo.SPEC_NAME} --home {home}")
    cmd_trace(argparse.Namespace(home=str(home), query=demo.SPEC_NAME, output="text"))

    _say("A bad export scrambles every route; the reviewer approves it anyway")
    serving_before = status.run_id
    demo.degrade_labels(repo.root)
    dvc.version(repo.root, demo.DATA_PATH)
    demo.write_reviews(repo.root, demo.SPEC_NAME)
    demo.commit(repo.root, "Re-export tickets from the new helpdesk")
    status = _settle(reconciler, demo.SPEC_NAME)
    gate = status.condition("GatePassed")
    print(f"    new run {status.run_id}: GatePassed={gate.status if gate else '-'} ({gate.message if gate else ''})")
    current = serving.current(demo.SPEC_NAME)
    if gate is None or gate.status != "False" or status.serving_run_id != serving_before:
        failures.append(f"the bad data's run should fail its gate while run {serving_before} keeps serving")
    if current is not None and current.url is not None:
        reply = Checker(current.url, repo.root / demo.CORPUS, failures).ask(_tickets(1)[0])
        print(f"    still served by run {reply['run']} (before the bad data: {serving_before})")
        if reply["run"] != serving_before:
            failures.append(f"run {reply['run']} answers, not {serving_before}")
    _say(f"ftops status --home {home}")
    cmd_status(home_args)
    _say(f"ftops audit verify --home {home}")
    if cmd_audit_verify(argparse.Namespace(home=str(home))) != 0:
        failures.append("the audit ledger does not verify")
    if not args.keep_serving:
        serving.stop(demo.SPEC_NAME)
        print("\n    (the demo server is stopped; run with --keep-serving to keep it)")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    ok = not failures
    _say(f"Demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s. Explore: ftops status|get|trace|audit "
         f"--home {home}")
    return exitcodes.OK if ok else exitcodes.FAILURE
