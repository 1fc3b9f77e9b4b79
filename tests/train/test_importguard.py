"""bitsandbytes stays out of the processes that never quantize (controller.importguard), and a
QLoRA process still gets it. Each check runs a fresh interpreter: what a process imported is a
property of that process, and the pytest worker has imported everything already."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import METHOD_RUNS, make_config

PROBE = ("import importlib.util, json, sys; "
         "print(json.dumps({'loaded': sys.modules.get('bitsandbytes') is not None, "
         "'findable': importlib.util.find_spec('bitsandbytes') is not None}))")


def _run(code: str, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peft_and_transformers_take_their_not_installed_path():
    """Without the guard, importing peft imports bitsandbytes (what the guard saves); with it,
    peft and transformers both answer that it is not installed, and peft still builds a LoRA."""
    assert _run(f"import peft; {PROBE}")["loaded"]
    guarded = _run(
        "from controller.importguard import without_bitsandbytes; without_bitsandbytes(); "
        "import json, peft, torch; from peft.import_utils import is_bnb_available; "
        "from transformers.utils import is_bitsandbytes_available; "
        "m = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), peft.LoraConfig(r=2, target_modules=['0'])); "
        "print(json.dumps({'peft': is_bnb_available(), 'transformers': is_bitsandbytes_available(), "
        "'lora': type(m.base_model.model[0]).__name__}))")
    assert guarded == {"peft": False, "transformers": False, "lora": "Linear"}


def _train_process(config: Path) -> dict:
    """`python -m controller.train --config` (its __main__ block, as the backends start it), and
    at exit whether bitsandbytes was loaded in that process."""
    # atexit prints after the trainer's own output: the last line is the probe's
    code = ("import atexit, json, runpy, sys\n"
            "atexit.register(lambda: print(json.dumps({'loaded': sys.modules.get('bitsandbytes') is not None})))\n"
            f"sys.argv = ['controller.train', '--config', {str(config)!r}]\n"
            "runpy.run_module('controller.train', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method, loaded", [("lora", False), ("qlora", True)])
def test_a_trainer_process_loads_bitsandbytes_only_for_qlora(method, loaded, tiny_model, task_data, tmp_path):
    """A few steps of each (the methods' learning is test_methods.py's): the LoRA trainer's
    process never loads bitsandbytes, the QLoRA one loads it and quantizes."""
    spec, training = METHOD_RUNS[method]
    config = make_config(tmp_path, tiny_model, task_data, spec, **{**training, "epochs": 0.1})
    assert _train_process(config) == {"loaded": loaded}
    quantization = json.loads((tmp_path / "out" / "manifest.json").read_text())["provenance"]["quantization"]
    assert (quantization is not None) is loaded


def test_the_evaluator_keeps_bitsandbytes_out_for_every_run():
    """The evaluator loads every base unquantized, as the servers do (a QLoRA run's included), so
    its process never imports bitsandbytes, and peft and transformers take their not-installed path."""
    result = _run(f"from controller.evaluate.__main__ import _without_unused_libraries; _without_unused_libraries(); "
                  f"import peft, transformers; {PROBE}")
    assert result == {"loaded": False, "findable": False}
