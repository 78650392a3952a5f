"""The repository's structure, checked: the library's layers import only downward, and every DVC stage declares
the code it runs (its import closure inside `pipeline/` and `stages/`) as deps, so a code change reruns exactly the
stages it affects."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")

# Layers of the library, lowest first: a module may import modules of its own layer or below, never above. The most
# specific prefix decides (``pipeline.data.sampling`` is a foundation, the rest of ``pipeline.data`` is not).
LAYERS: dict[str, int] = {
    # 0: configuration and files
    "pipeline": 0, "pipeline.config": 0, "pipeline.io": 0, "pipeline.native_logs": 0, "pipeline.geometry": 0,
    # 1: signals, checkpoints, figures, tracking, sampling, statistics
    "pipeline.audio": 1, "pipeline.media": 1, "pipeline.checkpoint": 1, "pipeline.viz": 1, "pipeline.tracking": 1,
    "pipeline.pyramid": 1, "pipeline.data.sampling": 1, "pipeline.metrics.bootstrap": 1,
    # 2: faces, the synthetic corpus, the processed corpus as training data
    "pipeline.faces": 2, "pipeline.synth": 2, "pipeline.data": 2,
    # 3: networks (and their loaders)
    "pipeline.models": 3,
    # 4: losses and metrics
    "pipeline.losses": 4, "pipeline.metrics": 4,
    # 5: applications of the models: inference, preprocessing, checks
    "pipeline.render": 5, "pipeline.preprocess": 5, "pipeline.preprocess_report": 5, "pipeline.extractor_check": 5,
    "pipeline.animate": 5, "pipeline.bundle": 5, "pipeline.evaluate": 5, "pipeline.evaluate_run": 5,
    # 6: training loops
    "pipeline.train": 6,
    # 7: entry points
    "stages": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@cache
def _imports(module: str) -> frozenset[str]:
    """Project modules `module` imports anywhere in its file (function-level imports included: they run too),
    plus the packages whose ``__init__`` each import executes."""
    mods = _modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(mods[module].read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                assert name in mods, f"{mods[module]}: imports {name}, which is not a module of the project"
                parts = name.split(".")
                found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    found.discard(module)
    return frozenset(found)


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m) - seen)
    return seen


def _layer(module: str) -> int:
    for k in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:k])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module}: no layer assigned in tests/test_structure.py LAYERS")


def test_every_module_has_a_layer_and_imports_only_downward() -> None:
    upward = []
    for module in _modules():
        for target in _imports(module):
            if _layer(target) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(upward)


def test_models_data_losses_and_inference_do_not_need_the_training_package() -> None:
    below = [m for m in _modules() if m.startswith(("pipeline.models", "pipeline.data", "pipeline.losses",
                                                    "pipeline.metrics", "pipeline.render"))]
    offenders = [m for m in below if any(t.startswith("pipeline.train") for t in _closure(m))]
    assert not offenders, offenders


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_cover_the_code_it_runs(stage: str) -> None:
    spec = _stages()[stage]
    match = re.search(r"(?:python|\$\{common\.launcher\}) -m (stages\.\w+)", spec["cmd"])
    assert match, f"dvc.yaml stage {stage}: cmd does not run `python -m stages.<name>` (or `${{common.launcher}} -m ...`)"
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    code_deps = [ROOT / d for d in deps if d.split("/")[0] in PACKAGES]
    missing_paths = [str(p.relative_to(ROOT)) for p in code_deps if not p.exists()]
    assert not missing_paths, f"dvc.yaml stage {stage}: deps that do not exist: {missing_paths}"

    def covered(path: Path) -> bool:
        return any(path == d or (d.is_dir() and d in path.parents) for d in code_deps)

    files = sorted({_modules()[m] for m in _closure(match.group(1))})
    uncovered = [str(f.relative_to(ROOT)) for f in files if not covered(f)]
    assert not uncovered, f"dvc.yaml stage {stage}: deps miss code it imports: {uncovered}"
    # and no code dep that the stage does not run (it would rerun the stage for nothing)
    unused = [str(d.relative_to(ROOT)) for d in code_deps
              if d.suffix == ".py" or d.is_dir() and d.name != "__pycache__" and (d / "__init__.py").exists()
              if not any(f == d or d in f.parents for f in files)]
    assert not unused, f"dvc.yaml stage {stage}: code deps it never imports: {unused}"


def _readme_table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Method → code", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---") and "implementation" not in line]


def test_readme_method_table_names_code_and_tests_that_exist() -> None:
    """Every `file:symbol` and `tests/file::test` of the README's equation table exists (so the table cannot rot)."""
    rows = _readme_table_rows()
    assert len(rows) >= 15
    missing = []
    for _, impl, tests in rows:
        for cell, kind in ((impl, "code"), (tests, "test")):
            current: Path | None = None
            for ref in re.findall(r"`([^`]+)`", cell):
                path, _, symbol = ref.replace("::", ":").partition(":")
                if path.endswith(".py") or path.startswith(("pipeline/", "tests/", "benchmarks/")):
                    current = ROOT / path
                    if not current.exists():
                        missing.append(ref)
                        continue
                elif current is not None and kind == "test":
                    symbol = ref.lstrip(":")  # `::other_test` of the same file
                else:
                    symbol = ref if current is not None else ""
                name = symbol.split(".")[0].split("(")[0].strip()
                if current is not None and current.is_file() and name and name.isidentifier():
                    source = current.read_text()
                    if not re.search(rf"^\s*(def|class)\s+{name}\b|^{name}\s*[:=]", source, re.M):
                        missing.append(f"{current.relative_to(ROOT)}:{name}")
    assert not missing, missing


def test_every_training_stage_runs_through_the_launcher_and_depends_on_device_and_precision() -> None:
    """`common.launcher` switches every training stage to torchrun; device and precision change their results."""
    from stages.training import run_training_stage  # noqa: F401 - the module the launcher's stages share

    training = [name for name, spec in _stages().items()
                if "stages/training.py" in [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]]
    assert len(training) == 6, training
    for name in training:
        spec = _stages()[name]
        assert spec["cmd"].startswith("${common.launcher} -m stages."), name
        assert {"common.seed", "common.device", "common.precision"} <= set(spec["params"]), name
    for name, spec in _stages().items():
        if name not in training:
            assert "${common.launcher}" not in spec["cmd"] and "common" not in spec.get("params", []), name
