"""Where ftops finds the files it ships (templates, defaults), in a checkout and in a wheel."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """The Jinja templates: `templates/` beside the package in a checkout or editable install,
    `controller/_templates` inside an installed wheel (setup.py maps one onto the other)."""
    checkout = PACKAGE_DIR.parent / "templates"
    if checkout.is_dir():
        return checkout
    installed = PACKAGE_DIR / "_templates"
    if installed.is_dir():
        return installed
    raise FileNotFoundError(f"ftops templates not found in {checkout} or {installed}; reinstall ftops")


def defaults_dir() -> Path:
    """Shipped defaults: GPU catalog, price table, regression suite."""
    return PACKAGE_DIR / "defaults"
