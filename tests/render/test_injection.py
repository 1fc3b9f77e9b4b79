"""Injection: a quote, a newline, YAML syntax or a `{{ }}` in any string that reaches a template
must come out as that same string, in the same place, and change nothing else.

The strongest form of the check: render each template twice, once with every string of the
context replaced by a unique marker (`S17`) and once with the marker followed by a payload
(`S17"\\nkind: Secret`). Stripping the payload from every key and value of the second result
must give exactly the first. So no key, list item or document was added or lost, and every
value landed intact where its marker did."""
from __future__ import annotations

import json
from typing import Any

import pytest

import controller.render as R
import controller.render.templates as T
import controller.render.yamlsubset as Y
from controller.render import serving as serving_render
from controller.render import training as training_render
from controller.render import ServingInput, render, render_serving
from render_sample import COMMIT, DATA_MD5, RUN_ID, finetune, operator, render_input

PAYLOADS = [
    '"',
    "'",
    "\n",
    '"\nkind: Secret\nmetadata: {name: stolen}\n',
    "{{ 7 * 7 }}",
    "{% raw %}{{ config }}{% endraw %}",
    "}}{{",
    "\n---\napiVersion: v1\nkind: Secret\n",
    ": x\n  extra: key",
    "- item",
    "# comment",
    "\\",
    "\\n",
    "&a *a !!python/object/apply:os.system ['id']",
    "\t\r\n",
    "\u2028\u2029\x85",
    "<script>&amp;",
    "${HOME} $(JOB_COMPLETION_INDEX)",
]


# Maps whose keys are data too (label and annotation keys, node selector keys).
KEYED = {"labels", "jobLabels", "podLabels", "annotations", "podSelector", "nodeSelector", "selector", "serviceSelector"}


def _mark(node: Any, payload: str, counter: list[int], keys: bool, parent: str = "") -> Any:
    """Replace every string (and the keys of label-like maps) by a unique marker + payload."""
    if isinstance(node, str):
        counter[0] += 1
        return f"S{counter[0]}{payload}"
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            new_key = k
            if keys and parent in KEYED:
                counter[0] += 1
                new_key = f"K{counter[0]}{payload}"
            out[new_key] = _mark(v, payload, counter, keys, k)
        return out
    if isinstance(node, list):
        return [_mark(v, payload, counter, keys, parent) for v in node]
    return node


def _strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _strip(node: Any, payload: str) -> Any:
    if isinstance(node, str):
        return node.replace(payload, "")
    if isinstance(node, dict):
        return {_strip(k, payload): _strip(v, payload) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip(v, payload) for v in node]
    return node


def _contexts() -> list[tuple[list[str], dict]]:
    out = []
    for nodes, flavor in ((1, "job"), (3, "job"), (3, "trainjob"), (3, "jobset")):
        ft = finetune(**{"spec.hardware.nodes": nodes, "spec.hardware.gpusPerNode": 2})
        op = operator(trainingFlavor=flavor, kueueQueue="q", priorityClassName="p", serviceAccountName="sa",
                      checkpointStorageClass="sc")
        kind, ctx = training_render._training_context(render_input(ft, op))
        out.append((R.training_templates(kind), ctx))
    return out


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_payload_in_every_string_of_every_training_template_changes_no_structure(payload):
    for templates, ctx in _contexts():
        for name in templates:
            plain = T.render_template(name, _mark(ctx, "", [0], keys=True))
            injected = T.render_template(name, _mark(ctx, payload, [0], keys=True))
            assert _strip(injected, payload) == plain, name
            # The payload really reached the output (the test is not vacuous).
            assert any(payload in text for text in _strings(injected)), name


@pytest.mark.parametrize("payload", PAYLOADS[:8], ids=range(8))
def test_payload_in_every_string_of_the_serving_templates_changes_no_structure(payload):
    inp = render_input()
    ctx = serving_render._serving_context(ServingInput(finetune=inp.finetune, run_id=RUN_ID,
                                          data_md5=DATA_MD5, git_commit=COMMIT, operator=inp.operator))
    captured = {name: ctx for name in R.SERVING_TEMPLATES}
    for name, ctx in captured.items():
        plain = T.render_template(name, _mark(ctx, "", [0], keys=True))
        injected = T.render_template(name, _mark(ctx, payload, [0], keys=True))
        assert _strip(injected, payload) == plain, name


def _skeleton(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _skeleton(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_skeleton(v) for v in node]
    return type(node).__name__


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_payload_in_spec_and_operator_strings_end_to_end(payload):
    """Through the public render(): free-text strings a spec or operator can write (LoRA target
    module names land in run.json; image, git repo and queue in the Job) keep the structure."""
    base_ft = finetune(**{"spec.method": {"type": "lora", "targetModules": ["q_proj"]}})
    evil_ft = finetune(**{"spec.method": {"type": "lora", "targetModules": ["q_proj" + payload]}})
    base_op = operator(image="img", artifactStore={"uri": "s3://b/p"}, priorityClassName="pc")
    evil_op = operator(image="img" + payload, artifactStore={"uri": "s3://b/p" + payload}, priorityClassName="pc" + payload)
    plain = render(render_input(base_ft, base_op), validate=False)
    evil = render(render_input(evil_ft, evil_op), validate=False)
    assert [_skeleton(m) for m in evil] == [_skeleton(m) for m in plain]
    job = evil[-1]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "img" + payload
    init = job["spec"]["template"]["spec"]["initContainers"][0]
    assert {e["name"]: e.get("value") for e in init["env"]}["FTOPS_STORE"] == "s3://b/p" + payload
    run_json = json.loads(evil[0]["data"]["run.json"])
    assert run_json["method"]["targetModules"] == ["q_proj" + payload]


def test_corpus_path_payload_reaches_the_inputs_container_verbatim():
    payload = 'a"b\n  c: {{ d }}'
    ft = finetune(**{"spec.serving": {"corpus": "corpora/" + payload, "replicas": 1}})
    inp = render_input(ft)
    manifests = render_serving(ServingInput(finetune=ft, run_id=RUN_ID, data_md5=DATA_MD5,
                                            git_commit=COMMIT, operator=inp.operator))
    cm = manifests[0]
    assert set(cm["data"]) == {"serve.json"}
    assert json.loads(cm["data"]["serve.json"])["corpus"] == "/workspace/corpus"
    init = manifests[1]["spec"]["template"]["spec"]["initContainers"][0]
    inputs = json.loads({e["name"]: e.get("value") for e in init["env"]}["FTOPS_INPUTS"])
    assert inputs[1][0].endswith("/corpora/" + payload)  # the corpus path, verbatim, inside one JSON value


@pytest.mark.parametrize("payload", ["", *PAYLOADS], ids=range(len(PAYLOADS) + 1))
def test_fast_manifest_parser_agrees_with_pyyaml(payload):
    """render.load_manifests reads our templates' YAML subset with json.loads; for every
    template, with or without payloads, it must give exactly what PyYAML's safe loader gives,
    and it must really take the fast path (not silently fall back)."""
    import yaml

    env = T._environment(str(T.templates_dir()))
    inp = render_input()
    serving = serving_render._serving_context(ServingInput(finetune=inp.finetune, run_id=RUN_ID,
                                              data_md5=DATA_MD5, git_commit=COMMIT, operator=inp.operator))
    pairs = [(name, ctx) for templates, ctx in _contexts() for name in templates]
    pairs += [(name, serving) for name in R.SERVING_TEMPLATES]
    for name, ctx in pairs:
        text = env.get_template(name).render(**_mark(ctx, payload, [0], keys=True))
        fast = [d for d in (Y._fast_load(chunk) for chunk in Y._documents(text)) if d is not None]
        assert fast == [d for d in yaml.safe_load_all(text) if d is not None], name


def test_text_outside_the_subset_falls_back_to_pyyaml():
    import yaml

    for text in ("a: &x 1\nb: *x\n", "a: yes\n", "a: 010\n", "# c\na: 1\n", "a:\n  - - 1\n", "a: 1\na: 2\n"):
        assert R.load_manifests(text) == [d for d in yaml.safe_load_all(text) if d is not None], text
