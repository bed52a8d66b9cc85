"""The house rules of docs/architecture.md, checked on the source: who may import whom, and
no production module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "metering", "storefront", "export", "billing", "sandbox_ui")
# package -> the project packages it may import (besides itself); metering's one exception is
# the leaf module serving.errors.
ALLOWED: dict[str, set[str]] = {
    "serving": set(),
    "metering": {"serving.errors"},
    "billing": {"serving", "metering"},
    "export": {"serving", "metering"},
    "sandbox_ui": {"serving", "metering"},
    "storefront": {"serving", "metering", "billing", "export", "sandbox_ui"},
}


def modules(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "migrations/versions" not in str(p)]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def allowed(package: str, name: str) -> bool:
    top = name.split(".")[0]
    if top not in PACKAGES or top == package:
        return True
    return any(name == rule or name.startswith(rule + ".") for rule in ALLOWED[package])


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_arrows(package: str) -> None:
    wrong = sorted(f"{p.relative_to(ROOT)}: {name}" for p in modules(package)
                   for name in imported(p) if not allowed(package, name))
    assert not wrong


def test_the_error_tree_is_a_leaf() -> None:
    names = imported(ROOT / "serving" / "errors.py")
    assert not {n for n in names if n.split(".")[0] in PACKAGES}
    assert names <= {"__future__", "json", "dataclasses", "typing"}  # ships inside bundles


def test_no_production_module_over_500_lines() -> None:
    long = sorted(f"{p.relative_to(ROOT)}: {n}" for pkg in PACKAGES for p in modules(pkg)
                  if (n := len(p.read_text().splitlines())) > 500)
    assert not long
