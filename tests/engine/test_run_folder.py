"""RunFolder: every path of the layout, construction from a checkpoint, the data-root precedence,
the weights hashed once, and no layout name spelled anywhere else in the package."""

from __future__ import annotations

import ast
import hashlib
import os
import re
from pathlib import Path

import pytest
import yaml

from medlens import _io
from medlens._io import file_sha256
from medlens.engine.run_folder import RunFolder, sidecar, weights_file

SRC = Path(__file__).resolve().parents[2] / "src" / "medlens"


def test_every_path_of_the_layout():
    run = RunFolder("runs/breast")
    expected = {
        "config": "config.yaml", "splits": "splits.json", "history": "history.csv",
        "pretrain_history": "pretrain.csv", "log": "train.log", "tracking_state": "tracking.json",
        "auto_plan": "auto.json", "metrics": "metrics.json", "bench_record": "bench.json",
        "checkpoints": "checkpoints", "best": "checkpoints/best.safetensors", "best_card": "checkpoints/best.json",
        "last": "checkpoints/last.safetensors", "last_card": "checkpoints/last.json",
        "resume_state": "checkpoints/resume.safetensors", "resume_card": "checkpoints/resume.json",
        "weights": "checkpoints/best.safetensors", "members_dir": "members", "export_dir": "export",
        "onnx": "export/model.onnx", "onnx_card": "export/model.json", "report": "report.html",
        "figures": "figures", "group": "group.json", "robustness_dir": "eval/robustness",
        "robustness_metrics": "eval/robustness/metrics.json", "robustness_examples": "eval/robustness/examples.png",
        "ood": "checkpoints/ood.safetensors", "ood_card": "checkpoints/ood.json",
    }
    for name, relative in expected.items():
        assert getattr(run, name) == Path("runs/breast") / relative, name
    assert run.checkpoint("last") == run.last
    assert run.eval_dir("test") == Path("runs/breast/eval/test")
    assert run.eval_metrics("val") == Path("runs/breast/eval/val/metrics.json")
    assert run.eval_predictions("test", "site_b") == Path("runs/breast/eval/test@site_b/predictions.csv")
    assert run.summary("cv") == Path("runs/breast/cv_summary.json")
    assert run.summary("seeds") == Path("runs/breast/seeds_summary.json")
    with pytest.raises(ValueError, match="group kind must be one of cv, seeds; got 'folds'"):
        run.summary("folds")
    # The MLflow store is shared by every run in the folder holding the run.
    assert (run.tracking_db, run.tracking_artifacts) == (Path("runs/mlflow.db"), Path("runs/mlflow-artifacts"))


def test_members_and_their_ensemble():
    ensemble = RunFolder("runs/ens")
    member = ensemble.member(2)
    assert member == RunFolder("runs/ens/members/m2")
    assert member.best == Path("runs/ens/members/m2/checkpoints/best.safetensors")
    assert member.ensemble == ensemble
    assert ensemble.ensemble is None


def test_checkpoint_file_names():
    assert sidecar("a/best.safetensors") == Path("a/best.json")
    assert sidecar("a/export/model.onnx") == Path("a/export/model.json")
    for name in ("a/best.json", "a/best", "a/best.safetensors"):
        assert weights_file(name) == Path("a/best.safetensors")


def test_construction_from_a_folder_or_a_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert RunFolder.of(run) == RunFolder(run)
    assert RunFolder.of(run).weights == run / "checkpoints" / "best.safetensors"
    for name in ("last.safetensors", "last.json"):  # inside checkpoints/: the folder above it
        located = RunFolder.of(run / "checkpoints" / name)
        assert located.path == run and located.weights == run / "checkpoints" / "last.safetensors"
        assert located.onnx == run / "export" / "model.onnx"
    kept = RunFolder.of(tmp_path / "models" / "breast.json")  # kept elsewhere: the folder holding it
    assert kept.path == tmp_path / "models" and kept.weights == tmp_path / "models" / "breast.safetensors"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert RunFolder.of("~/run").path == run
    with pytest.raises(ValueError, match=r"model\.pt is neither a run folder nor a checkpoint "
                                         r"\(\.safetensors or \.json\)"):
        RunFolder.of(tmp_path / "model.pt")


def test_states_read_from_disk(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert not (run.is_run or run.is_finished or run.is_group)
    run.path.mkdir()
    run.config.write_text("data: {}\n")
    assert run.is_run and not run.is_finished
    with pytest.raises(FileNotFoundError, match="is not a finished run: metrics.json is missing"):
        run.read_metrics()
    run.group.write_text("{}")
    assert run.is_group


@pytest.mark.parametrize("text", [
    '{"test": {"auc": null, "acc": 0.5}, "best_epoch": [1, 2], "seconds": 3.0}\n',  # write_json: NaN as null
    '{"test": {"auc": NaN, "acc": 0.5}, "best_epoch": [1, 2], "seconds": 3.0}',  # files from before
])
def test_read_metrics_gives_nan_for_null_and_for_old_bare_nan(tmp_path, text):
    run = RunFolder(tmp_path)
    run.metrics.write_text(text)
    metrics = run.read_metrics()
    assert metrics["test"]["auc"] != metrics["test"]["auc"]  # NaN
    assert (metrics["test"]["acc"], metrics["best_epoch"], metrics["seconds"]) == (0.5, [1, 2], 3.0)


def test_write_json_and_read_metrics_round_trip_nan(tmp_path):
    run = RunFolder(tmp_path)
    _io.write_json(run.metrics, {"val": {"auc": float("nan")}, "n": 3})
    assert "NaN" not in run.metrics.read_text() and "null" in run.metrics.read_text()
    assert run.read_metrics()["val"]["auc"] != run.read_metrics()["val"]["auc"]


# ----------------------------------------------------------------------------- the data root


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Four data folders that exist, one per level of the precedence; $MEDLENS_DATA and HOME point at theirs."""
    folders = {name: tmp_path / name for name in ("explicit", "stored", "env", "home")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("MEDLENS_DATA", str(folders["env"]))
    monkeypatch.setenv("HOME", str(folders["home"]))
    return folders


def _run_trained_with(tmp_path: Path, root) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.path.mkdir(exist_ok=True)
    data = {"spec": "breastmnist", "root": None if root is None else str(root)}
    run.config.write_text(yaml.safe_dump({"data": data}))
    return run


def test_data_root_precedence_explicit_then_stored_then_env_then_home(places, tmp_path, monkeypatch):
    run = _run_trained_with(tmp_path, places["stored"])
    assert run.data_root(places["explicit"]) == places["explicit"]
    assert run.data_root(str(places["explicit"])) == places["explicit"]
    assert run.data_root() == places["stored"]  # read from config.yaml
    # A config the caller holds already (a model card's) is used instead of config.yaml.
    assert run.data_root(config={"data": {"root": str(places["explicit"])}}) == places["explicit"]
    run_without_root = _run_trained_with(tmp_path, None)
    assert run_without_root.data_root() == places["env"]
    monkeypatch.delenv("MEDLENS_DATA")
    assert run_without_root.data_root() == places["home"] / ".medlens" / "data"


def test_data_root_passes_over_a_stored_root_missing_on_this_machine(places, tmp_path):
    # A run copied from another machine: its training root is not here, so $MEDLENS_DATA is used.
    run = _run_trained_with(tmp_path, tmp_path / "elsewhere" / "medmnist")
    assert run.data_root() == places["env"]
    assert run.data_root(places["explicit"]) == places["explicit"]


def test_data_root_of_a_folder_without_config(places, tmp_path):
    bare = RunFolder(tmp_path / "models")
    assert bare.data_root() == places["env"]
    assert bare.data_root(config={"data": {"root": str(places["stored"])}}) == places["stored"]
    assert bare.data_root(config={}) == places["env"]


# ----------------------------------------------------------------------------- hashing


def test_file_sha256_hashes_each_version_of_a_file_once(tmp_path, monkeypatch):
    hashed = []
    real = _io._hash_contents
    monkeypatch.setattr(_io, "_SHA256_CACHE", {})
    monkeypatch.setattr(_io, "_hash_contents", lambda path: hashed.append(Path(path)) or real(path))
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"weights v1")
    first = file_sha256(weights)
    assert first == hashlib.sha256(b"weights v1").hexdigest()
    assert file_sha256(weights) == first and file_sha256(str(weights)) == first
    assert hashed == [weights]
    # A new version (an atomic rewrite, as every medlens write is): hashed again, never the old answer.
    with _io.atomic_path(weights) as tmp:
        tmp.write_bytes(b"weights v2")
    assert file_sha256(weights) == hashlib.sha256(b"weights v2").hexdigest()
    assert len(hashed) == 2
    # Same size rewritten in place: the modification time tells it apart.
    stat = weights.stat()
    weights.write_bytes(b"weights v3")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(weights) == hashlib.sha256(b"weights v3").hexdigest()
    assert len(hashed) == 3


def test_file_sha256_cache_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "_SHA256_CACHE", {})
    monkeypatch.setattr(_io, "_SHA256_CACHE_SIZE", 3)
    for i in range(5):
        (tmp_path / f"{i}.bin").write_bytes(bytes([i]))
        file_sha256(tmp_path / f"{i}.bin")
    assert len(_io._SHA256_CACHE) == 3
    assert [key[0] for key in _io._SHA256_CACHE] == [os.path.realpath(tmp_path / f"{i}.bin") for i in (2, 3, 4)]


# ----------------------------------------------------------------------------- nothing else spells the layout

LAYOUT_FILES = ("config.yaml", "splits.json", "history.csv", "pretrain.csv", "train.log", "tracking.json",
                "auto.json", "metrics.json", "bench.json", "best.safetensors", "best.json", "last.safetensors",
                "last.json", "resume.safetensors", "resume.json", "model.onnx", "model.json", "predictions.csv",
                "report.html", "group.json", "cv_summary.json", "seeds_summary.json", "mlflow.db", "examples.png",
                "ood.safetensors", "ood.json")
LAYOUT_DIRS = ("checkpoints", "members", "eval", "export", "figures", "mlflow-artifacts")
# A string that is a path into a run folder: one ending in a layout file name (or any summary or
# .safetensors file), or one starting with a layout folder.
_PATH_LIKE = re.compile(
    r"(?:^|/)(?:" + "|".join(map(re.escape, LAYOUT_FILES)) + r")$|_summary\.json$|\.safetensors$"
    r"|^(?:" + "|".join(map(re.escape, LAYOUT_DIRS)) + r")/")
_PATH_CALLS = ("Path", "joinpath", "with_name", "with_stem", "with_suffix", "glob", "rglob")


def _in_path_context(node: ast.AST, parents: dict) -> bool:
    """Whether a string node builds or tests a path: ``x / "s"``, ``p.name == "s"``, ``Path("s")``, ..."""
    parent = parents.get(node)
    if isinstance(parent, ast.JoinedStr):
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Compare):
        return True
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in _PATH_CALLS
    return False


def layout_literals(source: str) -> list[tuple[int, str]]:
    """``(line, string)`` of every string literal in ``source`` that spells a run-folder path.

    Docstrings and other bare string statements are documentation and are not looked at. A
    layout folder name counts only where it builds or tests a path: ``"members"`` as a JSON key
    and ``"export"`` as a command name are other things of the same name.
    """
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    documentation = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in documentation:
            continue
        text = node.value
        if _PATH_LIKE.search(text) or (text in LAYOUT_DIRS and _in_path_context(node, parents)):
            found.append((node.lineno, node.col_offset, text))
    return [(line, text) for line, _, text in sorted(found)]


def test_the_layout_check_finds_what_it_should_and_only_that():
    spelled = '''
def f(run, d, i, kind, p):
    """The docstring may name checkpoints/best.safetensors and metrics.json."""
    a = run / "checkpoints" / "best.safetensors"
    b = run / "members" / f"m{i}"
    c = f"members/{d.name}"
    e = run.parent / f"{kind}_summary.json"
    g = p.parent.name == "members"
    h = Path("export")
    j = ["metrics.json", 'mlflow.db']
    return d["members"], d.get("eval"), add_parser("export"), {"members": 2}, "figures"
'''
    found = [text for _, text in layout_literals(spelled)]
    assert found == ["checkpoints", "best.safetensors", "members", "members/", "_summary.json", "members", "export",
                     "metrics.json", "mlflow.db"]


def test_no_layout_name_is_spelled_outside_run_folder_py():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the walk sees the package
    # timm's weights file name on the Hugging Face hub (--pretrained hf:REPO), not a run-folder path.
    allowed = {("models/pretrained.py", "model.safetensors")}
    offenders = [f"{path.relative_to(SRC)}:{line}: {text!r}"
                 for path in files if path != SRC / "engine" / "run_folder.py"
                 for line, text in layout_literals(path.read_text())
                 if (path.relative_to(SRC).as_posix(), text) not in allowed]
    assert offenders == [], "use medlens.engine.run_folder.RunFolder for these paths:\n" + "\n".join(offenders)
