"""Registering the data commands and importing the light data modules must not pull in heavy
libraries: `ftops validate` and `ftops plan` import every command module at start."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "dvc", "numpy", "tqdm")


def test_command_module_and_package_import_light():
    code = (
        "import sys, controller.commands.data_commands, controller.data, controller.data.params, controller.data.normalize;"
        "print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_cli_help_lists_the_data_commands():
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "data", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("check", "prepare", "review-sample", "review-status", "version", "pull"):
        assert name in proc.stdout
