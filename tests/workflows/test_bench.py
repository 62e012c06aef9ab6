"""`medlens bench` smoke test: one small dataset, a tiny budget, the table written, the budget kept."""

from __future__ import annotations

import json

import pytest

from medlens.cli import main


@pytest.mark.integration
@pytest.mark.slow
def test_bench_on_breastmnist_respects_the_budget_and_resumes(medmnist_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA", str(medmnist_root))
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n\n<!-- bench:start -->\nold table\n<!-- bench:end -->\n\nafter\n")
    args = ["bench", "--datasets", "breastmnist", "--budget", "20s", "--seeds", "1", "--work", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--readme", str(readme)]
    assert main(args) == 0
    [summary_file] = (tmp_path / "results").glob("bench-*.json")
    summary = json.loads(summary_file.read_text())
    [record] = summary["records"]
    assert record["budget_s"] == 20 and record["wall_s"] <= 20 * 1.2, record["wall_s"]
    assert record["within_budget"] and 0.5 <= record["acc"] <= 1 and record["ci"]["auc"]["lower"] <= record["auc"]
    [row] = summary["rows"]
    assert row["targets"]["auc"]["target"] == 0.92 and row["published"]["resnet18_28"] == {"auc": 0.901, "acc": 0.863}
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Benchmarks\n\nintro") and text.rstrip().endswith("after")
    assert "| breastmnist | 1 |" in text and f"{record['acc']:.4f}" in text
    assert (tmp_path / "results" / summary_file.name.replace(".json", ".md")).is_file()
    capsys.readouterr()
    # A second sitting keeps the finished pair instead of training it again.
    assert main(args) == 0
    assert "finished earlier, kept" in capsys.readouterr().err
    assert json.loads(summary_file.read_text())["records"] == summary["records"]


def _bench_readme_arg(monkeypatch, cwd) -> object:
    """The ``readme`` that ``medlens bench`` (run in ``cwd``, no --readme) passes on; nothing is trained."""
    from medlens.workflows import bench as workflow

    seen = {}

    def fake_bench(datasets, **kwargs):
        seen.update(kwargs)
        return {"rows": [], "date": "today"}

    monkeypatch.setattr(workflow, "bench", fake_bench)
    monkeypatch.chdir(cwd)
    assert main(["bench", "--datasets", "breastmnist", "--work", str(cwd / "w"), "--results", str(cwd / "r")]) == 0
    return seen["readme"]


def test_bench_readme_defaults_to_the_project_only_inside_it(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from medlens.workflows.bench import project_readme

    other = tmp_path / "other-repo"
    (other / "benchmarks").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    (other / "benchmarks" / "README.md").write_text("theirs\n")
    assert _bench_readme_arg(monkeypatch, other) is None
    assert "no README is rewritten" in capsys.readouterr().err
    assert project_readme(tmp_path) is None and project_readme(other / "benchmarks") is None
    repo = Path(__file__).resolve().parents[2]
    assert _bench_readme_arg(monkeypatch, repo / "src") == repo / "benchmarks" / "README.md"
    assert (other / "benchmarks" / "README.md").read_text() == "theirs\n"
