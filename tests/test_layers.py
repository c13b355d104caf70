"""The package's layering: imports go one way (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "voxseg"

# From the bottom up. A module may import modules of lower layers, and its own package's
# modules (data.* among themselves, train.* among themselves); nothing else.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_version"),
    ("atomic", "progress", "regions"),
    ("geometry", "metrics", "config", "console", "resample"),
    ("data",),  # files: io, nifti checks, discovery, label checks, inspection, DICOM-SEG
    (
        "preprocess",
        "weights",
        "distributed",
        "runtime",
        "models",
        "losses",
        "postprocess",
        "sliding",  # the window around any network callable (torch or ONNX Runtime)
    ),
    ("run_folder", "inference", "onnx_engine", "synth"),  # synth: tissue, checks,
    # shapes, texture, finish, tumour, torso, case, background, paint, dataset (each imports
    # only those listed before it)
    ("plots",),
    ("prediction", "export", "evaluation", "train"),  # training beside prediction, never under it
    ("report",),
    ("api", "demo"),
    ("cli",),
    ("__main__", "__init__"),
)
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}
NEVER_INTO_TRAIN = (
    *("prediction", "evaluation", "report", "plots", "inference", "postprocess"),
    *("export", "onnx_engine", "data", "regions", "resample", "sliding"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    """`voxseg.train.loop` -> `train`; `voxseg` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """voxseg modules `path` imports anywhere in its body, resolved to module names."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from voxseg import weights` imports a module; `from voxseg.x import f` does not.
            names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            if not names:
                names = [base]
        else:
            continue
        found.update(n for n in names if n == "voxseg" or n.startswith("voxseg."))
    return {n for n in found if n in known and n != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {m: _imports(p, m, set(files)) for m, p in files.items()}


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph if _group(m) not in RANK)
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_imports_only_go_down(graph):
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            a, b = _group(module), _group(target)
            if a != b and RANK[b] >= RANK[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_nothing_that_predicts_or_reports_imports_training(graph):
    wrong = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if _group(m) in NEVER_INTO_TRAIN and _group(t) == "train"
    ]
    assert not wrong, wrong


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_graph_is_read(graph):
    """The walker sees lazy imports: without them the tests above could not fail."""
    assert "voxseg.train.run" in graph["voxseg.cli.train"]  # imported inside the train command
    assert "voxseg.weights" in graph["voxseg.run_folder"]  # `from voxseg import weights`
    assert "voxseg.plots" in graph["voxseg.train.run"]  # imported inside a function


def test_voxseg_predict_never_loads_training(tmp_path: Path, kits_tiny: Path):
    """Follow one scan through `voxseg predict`, file in to mask out, in a fresh process."""

    from voxseg.config import InferConfig, ModelConfig, PreprocessConfig, RunConfig
    from voxseg.models import build_model
    from voxseg.run_folder import RunFolder
    from voxseg.weights import save_model

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    options = {"base_channels": 4, "depth": 2}
    run.save_config(
        RunConfig(
            preprocess=PreprocessConfig(spacing=(2.0, 2.0, 2.0)),
            model=ModelConfig("unet", options),
            infer=InferConfig(window=(16, 16, 16)),
        )
    )
    save_model(run.best_weights, build_model("unet", **options))
    scan = kits_tiny / "case_00003" / "imaging.nii.gz"
    out = tmp_path / "mask.nii.gz"
    code = (
        "import sys\n"
        "from voxseg.cli import app\n"
        "try:\n"
        f"    app([{'predict'!r}, '--model', {str(run.root)!r}, '--input', {str(scan)!r},"
        f" '--output', {str(out)!r}, '--device', 'cpu'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(sorted(m for m in sys.modules if m.startswith('voxseg.train')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
