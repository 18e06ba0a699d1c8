"""The layout is the architecture (issue 21): small modules and functions, few top-level modules, imports
that never run back up a layer, and every public name the README shows still importable.

Static checks (ast only, nothing heavy is imported except for the README names): a second or two.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "toast_core"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120
MAX_TOP_MODULES = 14

#: The layers of toast_core, lowest first. A unit (a top-level module or package, or a named module of a
#: package: the longest name that matches counts) may import units of its own layer or below, never
#: above. ``toast_core/__init__.py`` (lazy public names) is outside.
LAYERS: list[set[str]] = [
    {"errors", "device", "cache", "io.safe_io", "io.images", "io.jsonable"},  # primitives
    {"attention", "recording", "backbones", "default_backbone", "models", "methods", "attribution", "maps"},
    {"io", "data", "viz"},                                                     # files, datasets, pictures
    {"training"},                                                              # trainer, stage 1, pretune
    {"demo", "compare", "analysis"},                                           # what the pages and commands use
    {"bench", "commands", "cli", "background", "__main__"},                    # entry points
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _unit_of(dotted: str) -> str:
    """The layered unit of ``a.b.c`` (below toast_core): the longest prefix named in LAYERS."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYER_OF:
            return ".".join(parts[:i])
    return parts[0]


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return _unit_of(".".join(parts))


def _imported_units(path: Path) -> dict[str, int]:
    """toast_core units a module imports (at any depth: lazy imports count too) -> first line."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    else:
        package = package[: -len(".__init__")]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if target != "toast_core" else [f"toast_core.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            if parts[0] == "toast_core" and len(parts) > 1 and parts[1] in LAYER_OF:
                found.setdefault(_unit_of(".".join(parts[1:])), node.lineno)
    return found


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules("toast_core", "app")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_120_lines():
    long = {}
    for p in _modules("toast_core", "app"):
        for fn in _functions(ast.parse(p.read_text())):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long[f"{p.relative_to(ROOT)}:{fn.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_few_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_every_unit_has_a_layer():
    units = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir()
                                                       if p.is_dir() and (p / "__init__.py").is_file()}
    assert units - {"__init__"} <= set(LAYER_OF), f"place these in LAYERS: {sorted(units - {'__init__'} - set(LAYER_OF))}"


def test_imports_never_run_back_up_a_layer():
    upward = []
    for p in _modules("toast_core"):
        if p == PACKAGE / "__init__.py":
            continue
        unit = _unit(p)
        for target, line in _imported_units(p).items():
            if LAYER_OF[target] > LAYER_OF[unit]:
                upward.append(f"{p.relative_to(ROOT)}:{line} ({unit}, layer {LAYER_OF[unit]}) imports {target} "
                              f"(layer {LAYER_OF[target]})")
    assert not upward, "imports up a layer:\n" + "\n".join(upward)


def test_viz_does_not_import_torch_or_streamlit():
    for p in _modules("toast_core/viz"):
        tree = ast.parse(p.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not [n for n in names if n.split(".")[0] in ("torch", "streamlit", "timm")], (p, names)


def test_app_is_above_the_library_never_below():
    for p in _modules("toast_core"):
        tree = ast.parse(p.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not [n for n in names if n.split(".")[0] in ("app", "streamlit")], p


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


def test_every_name_the_readme_shows_imports():
    readme = (ROOT / "README.md").read_text()
    import toast_core as tc

    tc_names = set(re.findall(r"\btc\.([A-Za-z_]\w*)\(", _readme_python()))
    assert tc_names >= {"available_methods", "build_model", "extract_attention"}, tc_names
    for name in sorted(tc_names):
        assert callable(getattr(tc, name)), name
    for name in tc.__all__:
        getattr(tc, name)
    dotted = set(re.findall(r"`(toast_core(?:\.[A-Za-z_]\w*)+)`", readme))
    dotted |= set(re.findall(r"python -m (toast_core(?:\.[A-Za-z_]\w*)*)", readme))
    assert dotted, "the README names no toast_core module or attribute"
    for path in sorted(dotted):
        parts = path.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{path} (README) does not import")


def test_every_command_the_readme_shows_exists():
    from toast_core.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"python -m toast_core ([a-z][a-z-]*)", readme))
    assert shown and shown <= set(COMMANDS), shown - set(COMMANDS)
    from toast_core import background

    assert callable(background.main)  # python -m toast_core.background status|stop
