"""The import rules of DESIGN.md, checked on the source: imports point one way.

An AST walk over every module of ``w2v_jax/`` (module-level and function-level imports alike)
maps each import of the package to its layer; a forbidden arrow fails naming ``file:line``.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "w2v_jax"

# base modules: import nothing else of the package except other base modules where listed
BASE = {"geometry": set(), "actions": {"geometry"}, "sharding": set(),
        "processing": {"fileio"}, "fileio": set(), "cli": set(), "config_parsing": set()}
# layer -> the top-level names of w2v_jax it may import (besides its own)
ALLOWED = {
    "sim": {"geometry", "actions"},
    "models": {"geometry", "actions", "sharding", "processing", "config_parsing"},
    "hf": {"geometry", "actions", "sharding", "processing", "models", "fileio"},
    "generate": {"geometry", "actions", "sharding", "processing", "models"},
    "data": {"geometry", "actions", "sharding", "processing", "sim", "fileio", "config_parsing"},
}
FORBIDDEN_EVERYWHERE = ("experiments", "data_gen")


def _imports(path: pathlib.Path, root: pathlib.Path = ROOT):
    """(line, imported dotted module) for every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from w2v_jax import sim` imports the module w2v_jax.sim
                yield node.lineno, f"{module}.{alias.name}"


def violations(package: pathlib.Path = PACKAGE) -> list[str]:
    """Every forbidden import arrow under ``package`` as 'file:line: layer imports target'."""
    out, root = [], package.parent
    for path in sorted(package.rglob("*.py")):
        layer = path.relative_to(package).with_suffix("").parts[0]
        for line, module in _imports(path, root):
            top = module.split(".")[0]
            where = f"{path.relative_to(root)}:{line}"
            if top in FORBIDDEN_EVERYWHERE:
                out.append(f"{where}: {layer} imports {module} (launchers sit above the library)")
                continue
            if top != "w2v_jax" or module == "w2v_jax":
                continue
            target = module.split(".")[1]
            if target == layer or not (package / target).exists() and not (
                    package / f"{target}.py").exists():
                continue  # itself, or a name imported from the package's __init__
            if layer in BASE:
                ok = target in BASE[layer]
            elif layer in ALLOWED:
                ok = target in ALLOWED[layer]
            elif layer == "supervision":
                ok = target not in ("train", "eval")
            elif layer == "train":
                ok = target != "eval"
            elif layer == "eval":
                ok = target != "train" or module.startswith("w2v_jax.train.runs")
            else:
                ok = True
            if not ok:
                out.append(f"{where}: {layer} imports {module}")
    return out


def test_the_library_follows_the_layering_of_design_md():
    bad = violations()
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_a_forbidden_arrow_is_reported_with_file_and_line(tmp_path):
    fake = tmp_path / "w2v_jax"
    (fake / "sim").mkdir(parents=True)
    (fake / "train").mkdir()
    (fake / "geometry.py").write_text("import numpy\n")
    (fake / "sim" / "scene.py").write_text(
        "from w2v_jax import geometry\n\n\ndef f():\n    from w2v_jax.train import run\n")
    (fake / "train" / "run.py").write_text("import data_gen.render_clips\n")
    bad = violations(fake)
    assert bad == ["w2v_jax/sim/scene.py:5: sim imports w2v_jax.train",
                   "w2v_jax/sim/scene.py:5: sim imports w2v_jax.train.run",
                   "w2v_jax/train/run.py:1: train imports data_gen.render_clips (launchers sit "
                   "above the library)"]


@pytest.mark.parametrize("module", ["geometry", "actions", "sharding", "processing"])
def test_base_modules_import_nothing_above_them(module):
    path = PACKAGE / f"{module}.py"
    files = [path] if path.exists() else sorted((PACKAGE / module).rglob("*.py"))
    for f in files:
        for line, imported in _imports(f):
            parts = imported.split(".")
            if parts[0] == "w2v_jax" and len(parts) > 1 and parts[1] != module:
                assert parts[1] in BASE[module], f"{f.relative_to(ROOT)}:{line}: {imported}"
