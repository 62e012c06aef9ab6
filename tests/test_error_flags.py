"""Every ``--flag`` a message recommends exists on the command that can print it.

A user who is told "pass --skip-bad" and then gets "unrecognized arguments: --skip-bad" has been
sent down a dead end. The messages are read from the source (string constants inside ``raise``
statements and ``warn``/``say``/``print`` calls), so a new message is checked without a new test.
Which command a message belongs to:

- a message naming ``medlens CMD`` recommends the flags after it to ``CMD``;
- a message in ``commands/NAME.py`` belongs to the command ``NAME``; in ``commands/_options.py``
  to every command that takes the training options;
- a message in ``data/`` can be printed by every command that resolves a dataset spec (a ``DATA``
  argument or a ``--data`` option), so each of them must have the flag;
- a message in ``engine/`` or ``workflows/`` belongs to the training commands (``train``, ``cv``);
- any other message needs the flag on at least one command.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from medlens.cli import build_parser

SRC = Path(__file__).resolve().parents[1] / "src" / "medlens"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"\bmedlens ([a-z]+)\b")
MESSAGE_CALLS = {"warn", "say", "_say", "print"}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _texts(node: ast.AST) -> list[str]:
    """The string pieces of a message (f-string parts included), in order."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _messages() -> list[tuple[str, int, str]]:
    """``(module path, line, text)`` of every message in the source."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                texts = _texts(node.exc)
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name not in MESSAGE_CALLS:
                    continue
                texts = _texts(node)
            else:
                continue
            text = "".join(texts)
            if FLAG.search(text):
                out.append((path.relative_to(SRC).as_posix(), node.lineno, text))
    return out


def _owners(module: str, parsers: dict) -> tuple[list[str], bool]:
    """``(commands, all_of_them)`` a message of ``module`` belongs to (see the module docstring)."""
    training = [name for name, p in parsers.items() if "--recipe" in _flags(p)]
    data = [name for name, p in parsers.items()
            if "--data" in _flags(p) or any(a.dest == "data" and not a.option_strings for a in p._actions)]
    parts = module.split("/")
    if parts[0] == "commands":
        name = parts[1].removesuffix(".py")
        return (training, True) if name == "_options" else ([name], True)
    if module in TRAINING_ONLY:
        return training, True
    if parts[0] == "data":
        return data, True
    if parts[0] in ("engine", "workflows"):
        # Some messages are reachable from one of them only (--folds from cv, --seeds from train,
        # --method from pretrain, whose SimCLR lives in engine/pretrain.py).
        return [*training, "bench", "pretrain"], False
    return list(parsers), False


# Data modules used by training only (class weights, oversampling), not when data is read.
TRAINING_ONLY = {"data/balance.py"}


def _checks(module: str, text: str, parsers: dict) -> list[tuple[list[str], bool, list[str]]]:
    """``(commands, all_of_them, flags)``: flags inside `medlens CMD ...` (in backticks, else to the
    end of the text) go to CMD; the others to the module's commands."""
    checks, rest = [], text
    for quoted in re.findall(r"`([^`]*)`", text):
        named = COMMAND.search(quoted)
        if named and named.group(1) in parsers:
            checks.append(([named.group(1)], True, FLAG.findall(quoted[named.end():])))
            rest = rest.replace(quoted, "")
    named = COMMAND.search(rest)
    if named and named.group(1) in parsers:
        checks.append(([named.group(1)], True, FLAG.findall(rest[named.end():])))
        rest = rest[:named.start()]
    return [*checks, (*_owners(module, parsers), FLAG.findall(rest))]


MESSAGES = _messages()


def test_the_messages_are_found():
    # The collector itself: the message that started this test, and a few others, are seen.
    found = {(module, flag) for module, _, text in MESSAGES for flag in FLAG.findall(text)}
    assert ("data/folder.py", "--skip-bad") in found
    assert ("data/download.py", "--no-verify") in found
    assert len(MESSAGES) > 20


@pytest.mark.parametrize(("module", "line", "text"), MESSAGES, ids=[f"{m}:{n}" for m, n, _ in MESSAGES])
def test_every_recommended_flag_exists(module, line, text):
    parsers = _parsers()
    checks = _checks(module, text, parsers)
    for commands, every, flags in checks:
        for flag in flags:
            having = [name for name in commands if flag in _flags(parsers[name])]
            missing = sorted(set(commands) - set(having))
            if every:
                assert not missing, f"{module}:{line} recommends {flag}, which {', '.join(missing)} lacks: {text!r}"
            else:
                assert having, f"{module}:{line} recommends {flag}, which no command has: {text!r}"


def test_skip_bad_is_recorded_in_the_config(tmp_path):
    from medlens.commands._options import train_overrides
    from medlens.engine.config import build_config

    args = build_parser().parse_args(["train", "folder:x", "--out", str(tmp_path / "r"), "--skip-bad",
                                      "--no-verify"])
    config = build_config(train_overrides(args))
    assert config.data.skip_bad is True and config.data.verify is False and config.data.download is True
    assert build_config({"data": {"spec": "folder:x"}}).data.skip_bad is False
    with pytest.raises(ValueError, match="data.skip_bad must be true or false"):
        build_config({"data": {"spec": "folder:x", "skip_bad": "yes"}})


def _folder_with_bad_files(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "benign" / "broken.png").write_bytes(b"not a png")
    (root / "malignant" / "cut.png").write_bytes((root / "malignant" / "0.png").read_bytes()[:40])
    return root


def test_train_evaluate_and_predict_take_skip_bad(tmp_path, capsys, monkeypatch):
    from medlens.cli import main

    monkeypatch.chdir(tmp_path)
    folder = _folder_with_bad_files(tmp_path / "scans")
    run = tmp_path / "run"
    common = ["--size", "16", "--model", "cnn_small", "--epochs", "1", "--tracking-uri", "none", "--no-report",
              "--no-progress", "--out", str(run)]
    assert main(["train", f"folder:{folder}", *common]) == 1
    assert "--skip-bad" in capsys.readouterr().err
    assert main(["train", f"folder:{folder}", "--skip-bad", *common]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable file(s)" in err and "broken.png" in err
    assert main(["evaluate", str(run), "--bootstrap", "0"]) == 0  # the run's skip_bad is kept
    capsys.readouterr()
    assert main(["predict", str(run), str(folder / "benign")]) == 1
    assert main(["predict", str(run), str(folder / "benign"), "--skip-bad"]) == 0
    assert "skipped 1 of 13 unreadable file(s)" in capsys.readouterr().err
