"""The package's layers and the one direction of their imports: cli → apps / tune → engine → core.

`core/` is pure torch and never imports ray; `engine/` schedules the core on Ray; `tune/` (the sweep)
and `apps/` (demo, bench, plan, report) sit on the engine side by side and never import each other;
`cli.py` sits above all. Imports inside functions count too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lgd_ray"
RANK = {"core": 0, "engine": 1, "tune": 2, "apps": 2, "cli": 3}


def layer_imports(package: Path) -> set[tuple[str, str, str]]:
    """(importing layer, imported layer, file) for every import of the package by itself, relative or
    absolute; the package root (`lgd_ray/__init__.py`: the version) is the layer ""."""
    found = set()
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        here = parts[:-1]  # the package the module sits in, below lgd_ray
        layer = parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package.name:
                target = node.module.split(".")[1:]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names if a.name.split(".")[0] == package.name]
                if not names:
                    continue
                target = names[0][1:]
            else:
                continue
            imported = target[0] if target else ""
            if imported != layer and layer != "__init__":
                found.add((layer, imported, str(path.relative_to(package))))
    return found


def test_imports_run_one_way():
    edges = layer_imports(PACKAGE)
    assert {(a, b) for a, b, _ in edges} >= {("engine", "core"), ("tune", "engine"), ("apps", "engine"), ("cli", "apps")}
    wrong = sorted(f"{f}: {a} imports {b}" for a, b, f in edges if b and not RANK[a] > RANK[b])
    assert not wrong, "imports against the layer direction:\n" + "\n".join(wrong)


def test_layer_check_sees_relative_and_local_imports(tmp_path):
    """The check itself: an engine module importing the sweep inside a function is caught."""
    pkg = tmp_path / "lgd_ray"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "engine" / "distill.py").write_text("def f():\n    from ..tune.spec import Sweep\n")
    (pkg / "core").mkdir()
    (pkg / "core" / "work.py").write_text("import lgd_ray.engine.store\n")
    assert layer_imports(pkg) == {("engine", "tune", "engine/distill.py"), ("core", "engine", "core/work.py")}


def test_core_never_imports_ray():
    code = ("import sys, importlib, pkgutil, lgd_ray.core as c\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('lgd_ray.core.' + m.name)\n"
            "assert 'ray' not in sys.modules, 'ray imported by the core'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent, env={**os.environ})


def test_a_train_worker_imports_no_diffusers():
    """Every Ray Train run starts a controller and a worker process that import the training module; with
    diffusers behind it (via the generator) each paid about 8 s of CPU more, per stage, on 2 cores."""
    code = ("import sys, lgd_ray.engine.train_job, lgd_ray.engine.eval_tasks\n"
            "heavy = {'diffusers', 'timm', 'matplotlib', 'scipy'} & set(sys.modules)\n"
            "assert not heavy, f'imported by the Train and evaluation modules: {sorted(heavy)}'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent, env={**os.environ})
