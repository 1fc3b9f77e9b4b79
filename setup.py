"""Packaging glue that pyproject.toml cannot express: the top-level templates/ folder
(fixed by our users' layout) ships inside the wheel as the package `controller._templates`,
so a non-editable `pip install .` finds the same templates as a source checkout."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["controller", "controller.*"]) + ["controller._templates"],
    package_dir={"controller._templates": "templates"},
    package_data={"controller._templates": ["*.j2", "**/*.j2"], "controller": ["defaults/*.yaml", "defaults/*.jsonl"]},
)
