"""The import graph of ``seglearn`` (issue 26): no circles, no import from a lower layer to a higher one.

Every ``import`` / ``from ... import`` statement of every module counts, at module level and inside
functions alike (a deferred import is still a dependency). ``import seglearn.x`` and
``from seglearn.x import name`` count as an import of ``seglearn.x`` (its ``__init__`` when ``x`` is
a package); ``from seglearn.x import y`` where ``y`` is a submodule counts as ``seglearn.x.y``.
The layer table below is the one of ``docs/architecture.md``: a module may import its own layer
(without circles) and the layers below it.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import seglearn

PACKAGE = Path(seglearn.__file__).resolve().parent

#: layer of every module, by the longest matching dotted prefix (``seglearn`` itself: exact match only)
LAYERS: dict[str, int] = {
    # 0 foundations: plain helpers, numpy in / numpy out, no models
    "seglearn": 0, "seglearn.errors": 0, "seglearn.log": 0, "seglearn.paths": 0, "seglearn.config": 0,
    "seglearn.options": 0, "seglearn.precision": 0, "seglearn.configs": 0, "seglearn.io": 0, "seglearn.data": 0,
    "seglearn.metrics": 0, "seglearn.features": 0, "seglearn.tiling": 0,
    # 1 stages without networks: preprocessing, classical baselines, characterisation, ToF-SIMS
    "seglearn.preprocess": 1, "seglearn.baselines": 1, "seglearn.characterise": 1, "seglearn.tofsims": 1,
    # 2 networks and phantoms: U-Net (segment), particles (instances), checkpoints, phantom generators (synth:
    # here, not in 1, because the particle phantoms number their particles with instances.fusion)
    "seglearn.segment": 2, "seglearn.instances": 2, "seglearn.ckpt": 2, "seglearn.synth": 2,
    # 3 what uses the networks: pretraining / fine-tuning, label suggestions, the CT user study
    "seglearn.pretrain": 3, "seglearn.suggest": 3, "seglearn.ct": 3,
    # 4 applications combining them: the benchmark table (and its U-Net method), the napari plugin
    "seglearn.benchmark": 4, "seglearn.napari": 4,
    # 5 the command layer: Hydra entry points and their dispatch
    "seglearn.cli": 5, "seglearn.commands": 5, "seglearn.runner": 5, "seglearn.__main__": 5,
    "seglearn.benchmark.cli": 5, "seglearn.benchmark.__main__": 5, "seglearn.characterise.cli": 5,
    "seglearn.ct.__main__": 5, "seglearn.synth.__main__": 5,
}

def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The module ``name`` executes: itself, or the longest known prefix (``seglearn.x.func`` -> ``seglearn.x``)."""
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in mods else None


def _targets(node: ast.AST, here: str, is_package: bool, mods: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {t for a in node.names if a.name.startswith("seglearn") and (t := _owner(a.name, mods))}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative import
        pkg = here.split(".") if is_package else here.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    if not base.startswith("seglearn"):
        return set()
    out = set()
    for alias in node.names:
        full = f"{base}.{alias.name}"
        target = full if full in mods else _owner(base, mods)
        if target:
            out.add(target)
    return out


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}`` over every import statement (read once)."""
    mods = modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, name, path.name == "__init__.py", mods):
                if target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(comp)
    return found


def layer(name: str) -> int | None:
    """Layer of module ``name`` from :data:`LAYERS` (longest dotted prefix; the root package only by name)."""
    parts = name.split(".")
    for n in range(len(parts), 1, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    return LAYERS["seglearn"] if name == "seglearn" else None


def _edges_inside(comp: set[str], graph) -> list[str]:
    return sorted(f"{a}:{graph[a][b]} -> {b}" for a in comp for b in graph[a] if b in comp)


# ---------------------------------------------------------------- the checks


def test_the_graph_sees_module_and_function_level_imports(tmp_path):
    """The checker itself: a circle hidden in a function, and a package import counted as its ``__init__``."""
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {}}
    assert circles(graph) == [{"a", "b", "c"}]
    real = import_graph()
    # a function-level import (seglearn.runner imports its stages inside functions) is an edge
    assert "seglearn.preprocess.stage" in real["seglearn.runner"]
    # ``from seglearn.metrics import score`` is the package seglearn.metrics (its __init__)
    assert "seglearn.metrics" in real["seglearn.segment.module"]
    assert layer("seglearn.segment.api") == 2 and layer("seglearn.benchmark.cli") == 5 and layer("seglearn") == 0


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS and docs/architecture.md): {missing}"


def test_no_import_circles():
    graph = import_graph()
    found = circles(graph)
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(
        f"  {sorted(c)}:\n    " + "\n    ".join(_edges_inside(c, graph)) for c in found)


def test_no_upward_imports():
    graph = import_graph()
    upward = sorted(f"{a}:{line} (layer {layer(a)}) -> {b} (layer {layer(b)})"
                    for a, targets in graph.items() for b, line in targets.items()
                    if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert not upward, f"{len(upward)} import(s) from a lower layer to a higher one:\n  " + "\n  ".join(upward)


def test_package_code_does_not_import_the_command_layer():
    """Only the command layer imports :mod:`seglearn.cli`; stages use :mod:`seglearn.log`."""
    graph = import_graph()
    bad = sorted(f"{a}:{graph[a]['seglearn.cli']}" for a in graph if "seglearn.cli" in graph[a] and layer(a) != 5)
    assert not bad, f"import seglearn.log instead of seglearn.cli in: {bad}"


_TORCH = "keeps the module importable without torch / Lightning: the network loads when it is built or fitted"

#: the modules that may still import ``seglearn`` inside a function, each with its reason (docs/architecture.md:
#: imports at module level; an import inside a function only defers torch / Lightning, or a stage of a lazy table)
DEFERRED: dict[str, str] = {
    "seglearn.commands": "lazy stage table: each command imports only its own stage, so every command starts fast",
    "seglearn.runner": "lazy stage table: a stage (preprocess.stage, pretrain.adapt) loads only when its kind runs",
    "seglearn.ckpt": "imported by runner at start-up: segment.net / instances.model (torch) and segment.blend "
                     "(scipy) load only when a checkpoint is validated",
    "seglearn.segment.api": _TORCH,
    "seglearn.segment.adapt": _TORCH,
    "seglearn.instances.pipeline": _TORCH,
    "seglearn.instances.keras_import": _TORCH,
    "seglearn.instances.train": _TORCH,
    "seglearn.pretrain.ft_setup": _TORCH,
    "seglearn.pretrain.finetune": "Lightning (ft_lit, lit) loads only when a run is fitted",
    "seglearn.pretrain.train": "Lightning (pretrain.lit) loads only when pretraining runs",
    "seglearn.benchmark.unet_method": "the U-Net method loads segment / pretrain.finetune (torch) only when it runs",
    "seglearn.ct.study": "the U-Net subset of the study loads segment (torch, Lightning) only when it runs",
    "seglearn.napari.layers": "the manifest-loaded napari reader stays light: suggest imports the inference stack",
    "seglearn.napari.session": "the widget opens without torch: training / fine-tuning load when the user trains",
    "seglearn.pretrain.autocontext": _TORCH,
}

HEAVY = ("torch", "lightning", "napari", "qtpy", "tensorflow", "stardist", "taufactor", "pyamg")
#: modules -> what importing them must not import: the command layer and the napari reader (manifest-loaded)
#: start without torch or scipy; the modules that defer torch above really import without it
LIGHT: dict[tuple[str, ...], tuple[str, ...]] = {
    ("seglearn.__main__", "seglearn.cli", "seglearn.commands", "seglearn.runner", "seglearn.options", "seglearn.io",
     "seglearn.ckpt", "seglearn.napari._io", "seglearn.napari.layers"): (*HEAVY, "scipy"),
    tuple(m for m, why in DEFERRED.items() if why == _TORCH or m.startswith("seglearn.napari.")): HEAVY,
}


def function_level_imports() -> dict[str, list[str]]:
    """``{module: ["line: statement", ...]}`` of the ``seglearn`` imports inside functions."""
    out: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for n in ast.walk(node):
                    if (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("seglearn")) or (
                            isinstance(n, ast.Import) and any(a.name.startswith("seglearn") for a in n.names)):
                        out.setdefault(name, []).append(f"{n.lineno}: {ast.unparse(n)}")
    return out


def test_function_level_imports_have_a_reason():
    """A ``seglearn`` import inside a function only in a module of :data:`DEFERRED`; no stale entries."""
    found = function_level_imports()
    new = {m: lines for m, lines in found.items() if m not in DEFERRED}
    assert not new, ("import at module level (or add the module to DEFERRED with its reason): "
                     + "; ".join(f"{m}: {lines}" for m, lines in sorted(new.items())))
    stale = sorted(set(DEFERRED) - set(found))
    assert not stale, f"no function-level seglearn import left in {stale}: remove them from DEFERRED"


def test_entry_modules_start_without_torch():
    """The command entry points and the napari reader import neither torch, Lightning, napari / Qt nor scipy."""
    for mods, banned in LIGHT.items():
        code = ("import importlib, sys\n"
                f"for m in {list(mods)!r}: importlib.import_module(m)\n"
                f"print(sorted(h for h in {list(banned)!r} if h in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", f"importing {list(mods)} imports {out.strip()}"


#: size limits of the house rules (docs/architecture.md): lines of a module, lines of a function
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def test_modules_and_functions_stay_small():
    big = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            big.append(f"module {name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"function {name}.{node.name} (line {node.lineno}): {n} lines")
    assert not big, (f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function; split them "
                     "into well-named helpers:\n  " + "\n  ".join(big))


def test_name_tables_point_at_existing_functions():
    """The tables that dispatch by import path (invisible to the graph above) name real functions."""
    import importlib

    from seglearn import commands, runner
    from seglearn.baselines import registry

    paths = [*runner.TRAINERS.values(), runner.FINETUNE, *runner.PREDICTORS.values(), *commands.COMMANDS.values(),
             *[p for pair in registry.METHODS.values() for p in pair]]
    missing = []
    for path in paths:
        module, func = path.split(":")
        if module not in modules() or not callable(getattr(importlib.import_module(module), func, None)):
            missing.append(path)
    assert not missing, f"name tables point at nothing: {missing}"
