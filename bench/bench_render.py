"""Render + validate 1,000 specs, against a bare Jinja render of the same templates.

The baseline is plain `jinja2.Environment` rendering the same template files with the same
values to text: no sandbox, no quoting policy, no YAML parsing, no schema validation. The ratio
says what safety (sandbox, StrictUndefined, tojson everywhere) and correctness (parse +
kubernetes-validate schemas + our enum/name checks) cost on top of templating itself. The goal
is at least 300 validated manifests per second."""
from __future__ import annotations

import json
import time

from bench.common import report

N_SPECS = 1000
TARGET_PER_SECOND = 300


def _inputs(n: int):
    from controller.catalog import OperatorConfig, load_operator_config
    from controller.render import RenderInput
    from controller.runconfig import RunConfig
    from controller.spec.finetune import FineTune

    base = load_operator_config()
    operators = {}
    for flavor in ("job", "trainjob", "jobset"):
        data = base.model_dump(by_alias=True)
        data["cluster"]["trainingFlavor"] = flavor
        data["cluster"]["kueueQueue"] = "gpus"
        operators[flavor] = OperatorConfig.model_validate(data)
    gpus = ["cpu", "rtx4090", "l4", "a10g", "a100-40gb", "a100-80gb", "h100-80gb"]
    out = []
    for i in range(n):
        run_id = f"{i:012x}"
        name = f"spec-{i:04d}"
        nodes = 1 if i % 4 else 1 + i % 8
        doc = {
            "apiVersion": "ftops.dev/v1alpha1", "kind": "FineTune",
            "metadata": {"name": name, "owner": f"team-{i % 7}", "labels": {"cost-center": f"cc-{i % 13}"}},
            "spec": {
                "baseModel": {"uri": "hf://org/base-7b", "revision": f"{i:040x}",
                              "credentials": {"name": "hf-token", "key": "token"}},
                "dataset": {"path": f"data/{name}.jsonl"},
                "method": {"type": ("lora", "qlora", "full")[i % 3]} | ({"r": 8 + i % 4 * 8} if i % 3 < 2 else {}),
                "training": {"epochs": 1 + i % 3, "learningRate": 1e-4},
                "hardware": {"gpuType": gpus[i % len(gpus)], "gpusPerNode": 1 + i % 8, "nodes": nodes,
                             "spot": bool(i % 2), "maxHours": 1 + i % 48},
            },
        }
        ft = FineTune.model_validate_json(json.dumps(doc))
        md5 = f"{i:032x}"
        rc = RunConfig.model_validate_json(json.dumps({
            "runId": run_id, "specName": name, "baseModel": {"uri": "hf://org/base-7b", "revision": f"{i:040x}"},
            "method": ft.spec.method.model_dump(mode="json", by_alias=True),
            "training": ft.spec.training.model_dump(mode="json", by_alias=True),
            "data": {"train": "/d/train.jsonl", "test": "/d/test.jsonl", "md5": md5},
            "outputDir": "/o", "checkpointDir": "/c"}))
        op = operators[("job", "trainjob", "jobset")[i % 3]]
        out.append(RenderInput(finetune=ft, run_id=run_id, data_md5=md5, git_commit=f"{i:040x}", operator=op, run_config=rc))
    return out


def main() -> None:
    import jinja2

    import controller.render as R
    import controller.render.templates as T
    from controller.render import training

    inputs = _inputs(N_SPECS)
    R.render(inputs[0])  # warm caches (schemas, compiled templates) outside the timings
    contexts = [training._training_context(inp) for inp in inputs]

    bare = jinja2.Environment(loader=jinja2.FileSystemLoader(str(T.templates_dir())), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)
    started = time.perf_counter()
    for kind, ctx in contexts:
        for name in R.training_templates(kind):
            bare.get_template(name).render(**ctx)
    bare_s = time.perf_counter() - started

    started = time.perf_counter()
    manifests = 0
    for inp in inputs:
        manifests += len(R.render(inp))
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    for inp in inputs:
        R.render(inp, validate=False)
    unvalidated_s = time.perf_counter() - started

    rate = manifests / ours_s
    report(f"render + validate {N_SPECS} specs ({manifests} manifests)", [
        ("bare Jinja (text only)", f"{bare_s * 1000:.0f} ms"),
        ("ftops render, no validation", f"{unvalidated_s * 1000:.0f} ms  ({unvalidated_s / bare_s:.1f}x bare)"),
        ("ftops render + validation", f"{ours_s * 1000:.0f} ms  ({ours_s / bare_s:.1f}x bare)"),
        ("validated manifests/s", f"{rate:.0f}  (target >= {TARGET_PER_SECOND}: {'met' if rate >= TARGET_PER_SECOND else 'MISSED'})"),
        ("ratio ours / bare Jinja", f"{ours_s / bare_s:.2f}"),
    ])


if __name__ == "__main__":
    main()
