"""Generation is deterministic and batching does not change answers; format compliance on real
outputs drops below 1.0 when a broken output is planted, and names it."""
from __future__ import annotations

import json
import math

import pytest

from controller.evaluate import metrics as M
from controller.evaluate.datasets import read_examples
from controller.evaluate.generation import generate, load_run_model, read_manifest
from controller.evaluate.suites.format import compliance as evaluate_format
from controller.gate import decide
from controller.errors import PermanentError

SCHEMA = {
    "type": "object", "required": ["label"], "additionalProperties": False,
    "properties": {"label": {"enum": ["billing", "bug", "account"]}},
}


@pytest.fixture(scope="module")
def well_outputs(well_run):
    model = load_run_model(well_run.run_dir, "cpu")
    examples = read_examples(well_run.test, "test")
    outputs = generate(model, [e.messages for e in examples], batch_size=32, max_new_tokens=24, progress=False)
    return model, examples, outputs


def test_batched_generation_equals_one_by_one_and_repeats_exactly(well_outputs) -> None:
    model, examples, outputs = well_outputs
    some = [e.messages for e in examples[:10]]
    one_by_one = generate(model, some, batch_size=1, max_new_tokens=24, progress=False)
    assert one_by_one == outputs[:10]
    assert generate(model, some, batch_size=4, max_new_tokens=24, progress=False) == outputs[:10]


def test_prompts_use_the_chat_template_recorded_in_the_manifest(well_run, well_outputs) -> None:
    model, examples, _ = well_outputs
    manifest = read_manifest(well_run.run_dir)
    assert model.tokenizer.chat_template == manifest["provenance"]["chatTemplate"]
    prompt = model.tokenizer.apply_chat_template(examples[0].messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and examples[0].reference not in prompt


def test_a_planted_broken_output_drops_compliance_below_one(well_run, well_outputs) -> None:
    _, examples, outputs = well_outputs
    check = M.format_checker(json_schema=SCHEMA)
    clean = evaluate_format(outputs, check, examples)
    assert clean["compliance"] == 1.0 and clean["failures"] == []

    planted = list(outputs)
    planted[7] = planted[7].rstrip("}")             # truncated JSON
    planted[11] = '{"label": "refund"}'             # valid JSON, label outside the schema
    result = evaluate_format(planted, check, examples)
    assert result["compliance"] == pytest.approx((len(outputs) - 2) / len(outputs))
    assert [(f["index"], f["line"]) for f in result["failures"]] == [(7, examples[7].line), (11, examples[11].line)]
    assert result["failures"][0]["reason"].startswith("not JSON")
    assert "label" in result["failures"][1]["reason"] and "refund" in result["failures"][1]["reason"]

    regex = evaluate_format(planted, M.format_checker(regex=r'\{"label": "(billing|bug|account)"\}'), examples)
    assert [f["index"] for f in regex["failures"]] == [7, 11]

    # The gate turns it into a failing line with the value and the threshold.
    from eval_helpers import load_spec, write_spec

    spec_dir = well_run.run_dir.parent.parent / "planted-spec"
    spec = load_spec(write_spec(spec_dir, """    format:
      regex: '\\{"label": "(billing|bug|account)"\\}'
      min: 1.0"""))
    report = {"runId": well_run.run_id, "status": "completed",
              "metrics": {"task.exact_match": 1.0, "format.compliance": result["compliance"], "regression.drop": 0.0,
                          "compare.fine-tuned.score": 1.0, "compare.base.score": 0.0}}
    decision = decide(report, spec, well_run.run_id)
    assert [line.metric for line in decision.failures] == ["format.compliance"]
    assert decision.failures[0].value < 1.0


def test_read_examples_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]})
                    + "\n" + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(PermanentError, match=r"bad.jsonl:2: the last message must be the assistant's reference answer"):
        read_examples(path, "test split")
    assert math.isnan(M.mean([]))


def test_the_model_loads_exactly_as_trained(well_run, well_outputs) -> None:
    """Teacher-forced loss of the loaded model on the test split equals the trainer's own testLoss
    (summary.json): same base, same adapter, same template, same tokens."""
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from controller.train.batching import IGNORE_INDEX, collate
    from controller.train.data import tokenize_split

    model, _, _ = well_outputs
    data = tokenize_split(Path(well_run.test), "test", model.tokenizer, data_md5="0" * 32, max_length=256, cache_dir=None)
    ids, labels, mask, _ = collate([[i] for i in range(len(data.input_ids))], data.input_ids, data.labels,
                                   model.tokenizer.pad_token_id, packing=False)
    with torch.inference_mode():
        logits = model.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    summary = json.loads((well_run.run_dir / "summary.json").read_text())
    assert float(loss) == pytest.approx(summary["testLoss"], rel=1e-4)
