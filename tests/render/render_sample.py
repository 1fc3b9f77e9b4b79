"""Sample inputs for render tests: a valid FineTune and a matching run.json, built from plain
dicts the way a spec file and the controller would produce them."""
from __future__ import annotations

import copy
import json
from typing import Any

from controller.catalog import OperatorConfig, load_operator_config
from controller.render import RenderInput
from controller.runconfig import RunConfig
from controller.spec.finetune import FineTune

RUN_ID = "0123456789abcdef0123456789abcdef"
DATA_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
COMMIT = "a" * 40

SPEC: dict[str, Any] = {
    "apiVersion": "ftops.dev/v1alpha1",
    "kind": "FineTune",
    "metadata": {"name": "support-bot", "owner": "team-a", "labels": {"cost-center": "cc-42"}},
    "spec": {
        "baseModel": {
            "uri": "hf://org/base-7b",
            "revision": "b" * 40,
            "credentials": {"name": "hf-token", "key": "token"},
        },
        "dataset": {"path": "data/support.jsonl"},
        "method": {"type": "lora", "r": 16},
        "hardware": {"gpuType": "a100-80gb", "gpusPerNode": 1, "nodes": 1, "maxHours": 6},
        "serving": {"corpus": "corpora/support", "replicas": 2},
    },
}


def finetune(**overrides: Any) -> FineTune:
    """The sample spec with `overrides` applied as dotted paths: finetune(**{"spec.hardware.nodes": 2})."""
    data = copy.deepcopy(SPEC)
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    # JSON mode: YAML lists become the models' tuples, as the spec loader does.
    return FineTune.model_validate_json(json.dumps(data))


def run_config(ft: FineTune, run_id: str = RUN_ID, data_md5: str = DATA_MD5) -> RunConfig:
    return RunConfig.model_validate_json(
        json.dumps(
            {
                "runId": run_id,
                "specName": ft.name,
                "baseModel": {"uri": ft.spec.base_model.uri, "revision": ft.spec.base_model.revision},
                "method": ft.spec.method.model_dump(mode="json", by_alias=True),
                "training": ft.spec.training.model_dump(mode="json", by_alias=True),
                "data": {"train": "/host/prepared/train.jsonl", "test": "/host/prepared/test.jsonl", "md5": data_md5},
                "outputDir": "/host/artifacts/x",
                "checkpointDir": "/host/ckpt/x",
            }
        )
    )


def operator(**cluster: Any) -> OperatorConfig:
    base = load_operator_config()
    data = base.model_dump(by_alias=True)
    data["cluster"].update(cluster)
    return OperatorConfig.model_validate(data)


def render_input(ft: FineTune | None = None, op: OperatorConfig | None = None, **kw: Any) -> RenderInput:
    ft = ft or finetune()
    return RenderInput(
        finetune=ft,
        run_id=kw.pop("run_id", RUN_ID),
        data_md5=kw.pop("data_md5", DATA_MD5),
        git_commit=kw.pop("git_commit", COMMIT),
        operator=op or operator(),
        run_config=kw.pop("run_config", None) or run_config(ft),
        **kw,
    )
