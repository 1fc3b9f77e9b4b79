"""A non-editable `pip install .` must carry the templates and defaults, and the CLI must work
from anywhere, not only from a source checkout."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_non_editable_install_finds_templates_and_defaults(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(REPO_ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    probe = (
        "import controller, controller.paths as p, controller.render as r, controller.catalog as c;"
        "print(controller.__file__); print(p.templates_dir()); print(len(list(p.templates_dir().glob('*.j2'))));"
        "print(r.template_version()); print(sorted(c.load_operator_config().gpus)[0])"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, %r); exec(%r)" % (str(target), probe)],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    module_file, templates, count, version, first_gpu = done.stdout.split("\n")[:5]
    assert module_file.startswith(str(target))
    assert templates.startswith(str(target)) and templates.endswith("controller/_templates")
    assert int(count) == len(list((REPO_ROOT / "templates").glob("*.j2"))) > 0
    assert first_gpu == "a100-40gb"  # defaults/operator.yaml shipped in the wheel
    # the same templates produce the same template version as the checkout
    from controller.render import template_version

    assert version == template_version()
