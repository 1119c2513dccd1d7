"""Development tooling stays out of the product: ``devtools/`` (local brokers, demo, bench,
test harness) is neither imported by ``bridge`` nor installed with it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]

#: Last dotted component of a module that belongs to the development tooling.
TOOLING_NAMES = {"kafka_broker", "rocketmq_broker", "rocketmq_io", "harness", "bench", "demo"}
#: Where that tooling used to live inside the product.
OLD_HOMES = ("bridge.testing", "bridge.tools.demo", "bridge.tools.bench", "bridge.tools.harness")


def _tooling(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if name == "devtools"
        or name.startswith("devtools.")
        or name.rsplit(".", 1)[-1] in TOOLING_NAMES
        or any(name == old or name.startswith(old + ".") for old in OLD_HOMES)
    ]


def test_the_product_imports_no_development_tooling() -> None:
    # A fresh interpreter in the repository root, where devtools *is* importable: nothing
    # may pull it in, however indirectly.
    code = (
        "import json, sys\n"
        "import bridge.app, bridge.cli\n"
        "bridge.cli.build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = json.loads(out.stdout.splitlines()[-1])
    assert "bridge.app" in modules
    assert _tooling(modules) == []


def _installed_modules() -> list[str]:
    """Every module the image installs: the packages pyproject's find config selects (the
    image runs ``pip install .``), and the ``.py`` files directly in each of them."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = find["packages"]["find"]["include"]
    packages = find_packages(where=str(ROOT), include=include)
    modules = list(packages)
    for package in packages:
        folder = ROOT.joinpath(*package.split("."))
        modules += [f"{package}.{f.stem}" for f in folder.glob("*.py") if f.stem != "__init__"]
    return sorted(modules)


def test_the_image_installs_no_development_tooling() -> None:
    modules = _installed_modules()
    assert "bridge" in modules and "bridge.cli" in modules
    assert _tooling(modules) == []
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    assert all(not p.startswith(("testing/", "tools/")) for p in package_data.get("bridge", []))


def _imported_names(tree: ast.AST) -> list[str]:
    """Modules named by import statements and by ``import_module("...")``/``__import__``."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in {"import_module", "__import__"} and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def test_no_product_source_imports_devtools() -> None:
    sources = sorted((ROOT / "bridge").rglob("*.py"))
    assert sources
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in _imported_names(ast.parse(path.read_text(), filename=str(path)))
        if name == "devtools" or name.startswith("devtools.")
    ]
    assert offenders == []
