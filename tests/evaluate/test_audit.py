"""Subgroup audits (`evaluate --by`), external validation (`evaluate --data ... --split all`), and
training / cross-validation on CSV manifests with patient groups.

Unit tests on tiny manifests in tmp_path; the HAM10000 test (integration, slow) trains one epoch at
28 px and recomputes the audit from predictions.csv with pandas and scikit-learn.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medlens.cli import main
from medlens.data.registry import Task
from medlens.evaluate.audit import bin_labels, parse_bins, subgroup_values
from medlens.metrics.subgroups import MIN_SUBGROUP_N, subgroup_metrics
from helpers import HAM10000_OPTIONS

QUICK = ["--model", "cnn_small", "--epochs", "1", "--no-progress", "--tracking-uri", "none", "--no-report"]


def _manifest(root, n_patients: int = 40, per_patient: int = 2, flip: bool = False):
    """Bright images are class 'pos', dark 'neg' (learnable); two images per patient; sex and age columns."""
    rng = np.random.default_rng(1)
    rows = []
    for p in range(n_patients):
        positive = p % 2 == 0
        for k in range(per_patient):
            level = 200 if positive else 50
            pixels = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)
            name = f"img/p{p:02d}_{k}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name)
            label = ("neg" if positive else "pos") if flip else ("pos" if positive else "neg")
            rows.append([name, label, f"P{p:02d}", "F" if p % 3 else "M", str(20 + 2 * p) if p != 5 else ""])
    with open(root / "meta.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "dx", "patient", "sex", "age"])
        writer.writerows(rows)
    return root / "meta.csv"


def _flags(path) -> list[str]:
    return [f"csv:{path}", "--image-col", "file", "--label-col", "dx", "--group-col", "patient", "--size", "8"]


def test_parse_bins_and_bin_labels():
    assert parse_bins(["age:0,30,60,120", "bmi:q5"]) == {"age": [0, 30, 60, 120], "bmi": 5}
    for bad in ("age", "age:30,10", "age:q1", "age:x,y"):
        with pytest.raises(ValueError, match="--bins"):
            parse_bins([bad])
    labels = bin_labels(np.array(["0", "29.9", "30", "120", "121", ""]), [0, 30, 60, 120])
    assert labels.tolist() == ["[0, 30)", "[0, 30)", "[30, 60)", "[60, 120]", "(outside bins)", "(missing)"]
    quartiles, how = subgroup_values("age", np.array([str(v) for v in range(1, 101)]), None)
    assert how["kind"] == "quantiles" and len(set(quartiles.tolist())) == 4
    with pytest.raises(ValueError, match="not numeric"):
        subgroup_values("sex", np.array(["F", "M"]), [0, 1])


def test_subgroup_metrics_match_scikit_learn_and_mark_small_groups():
    from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    score = np.stack([1 - p1, p1], axis=1)
    groups = np.where(np.arange(300) < 10, "tiny", np.where(np.arange(300) % 2, "a", "b"))
    rows = {r["value"]: r for r in subgroup_metrics(y, score, groups, task=Task.BINARY, class_names=["n", "p"],
                                                    n_bootstrap=200)}
    for value in ("a", "b"):
        mask = groups == value
        predicted = score[mask].argmax(1)
        assert rows[value]["n"] == mask.sum()
        assert rows[value]["acc"] == pytest.approx(accuracy_score(y[mask], predicted))
        assert rows[value]["auc"] == pytest.approx(roc_auc_score(y[mask], p1[mask]))
        assert rows[value]["per_class"][1]["sensitivity"] == pytest.approx(recall_score(y[mask], predicted))
        assert rows[value]["per_class"][1]["specificity"] == pytest.approx(recall_score(1 - y[mask], 1 - predicted))
        whole_acc = accuracy_score(y, score.argmax(1))
        assert rows[value]["gap"]["acc"] == pytest.approx(rows[value]["acc"] - whole_acc)
        assert rows[value]["ci"]["auc"]["lower"] <= rows[value]["auc"] <= rows[value]["ci"]["auc"]["upper"]
        assert not rows[value]["too_small"]
    assert rows["tiny"]["n"] == 10 < MIN_SUBGROUP_N and rows["tiny"]["too_small"] and rows["tiny"]["ci"] == {}


def test_train_evaluate_by_and_external_data_on_manifests(tmp_path, capsys):
    path = _manifest(tmp_path / "site_a")
    run = tmp_path / "runs" / "a"
    assert main(["train", *_flags(path), "--out", str(run), *QUICK]) == 0
    record = json.loads((run / "splits.json").read_text())
    assert record["group_column"] == "patient" and record["metadata_columns"] == ["age", "sex"]
    owner = {}
    for split, groups in record["groups"].items():
        for group in groups:
            assert owner.setdefault(group, split) == split
    assert "source_options" in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--by", "sex,age", "--bins", "age:0,40,200", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "subgroups (" in out and ("[0, 40)" in out or "[40, 200]" in out)
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["schema_version"] == 2 and metrics["external"] is False
    assert sum(g["n"] for g in metrics["subgroups"]["columns"]["sex"]["groups"]) == metrics["n"]
    assert metrics["subgroups"]["columns"]["age"]["edges"] == [0, 40, 200]
    assert main(["evaluate", str(run), "--by", "site"]) != 0
    assert "no metadata column 'site'; the data has age, sex" in capsys.readouterr().err

    # another site's manifest, every image, no split carved; same class names
    other = _manifest(tmp_path / "site_b", n_patients=10)
    assert main(["evaluate", str(run), "--data", f"csv:{other}", "--image-col", "file", "--label-col", "dx",
                 "--split", "all", "--bootstrap", "0"]) == 0
    assert "(external data)" in capsys.readouterr().out
    external = json.loads(next((run / "eval").glob("all@*/metrics.json")).read_text())
    assert external["external"] is True and external["n"] == 20 and external["split"] == "all"
    # the same table with its classes numbered the other way round is renumbered to the model's, by name
    assert main(["evaluate", str(run), "--data", f"csv:{other}", "--image-col", "file", "--label-col", "dx",
                 "--class-order", "pos,neg", "--split", "all", "--bootstrap", "0"]) == 0
    reordered = json.loads(next((run / "eval").glob("all@*/metrics.json")).read_text())
    assert (reordered["acc"], reordered["auc"]) == (external["acc"], external["auc"])
    assert reordered["confusion"] == external["confusion"]

    from medlens.report.html import build_report

    page = build_report(run, gallery=0, explain=False, n_bootstrap=50, figures=False).read_text()
    assert "<h2>External validation</h2>" in page and "csv:" in page.split("External validation")[1]
    assert "<h2>Subgroups</h2>" in page and "AUC by subgroup" in page  # audited by default: the run has metadata

    # a folder whose classes are the model's in another order is renumbered by name
    for name, level in (("pos", 200), ("neg", 50)):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((12, 12), level, np.uint8)).save(tmp_path / "folder" / name / f"{i}.png")
    assert main(["evaluate", str(run), "--data", f"folder:{tmp_path / 'folder'}", "--split", "all",
                 "--bootstrap", "0"]) == 0
    # classes by other names are refused in one line
    (tmp_path / "folder" / "pos").rename(tmp_path / "folder" / "tumour")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", f"folder:{tmp_path / 'folder'}", "--split", "all"]) != 0
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "['neg', 'tumour']" in message and "missing ['pos']" in message


def test_cv_on_a_manifest_keeps_patients_in_one_fold(tmp_path):
    path = _manifest(tmp_path, n_patients=30)
    assert main(["cv", *_flags(path), "--folds", "3", "--out", str(tmp_path / "cv"), *QUICK]) == 0
    seen = {}
    for fold in range(3):
        record = json.loads(next((tmp_path / "cv").glob(f"fold{fold}*/splits.json")).read_text())
        assert not set(record["groups"]["train"]) & set(record["groups"]["val"])
        assert "grouped-fold" in record["method"]
        for group in record["groups"]["val"]:
            assert seen.setdefault(group, fold) == fold


@pytest.mark.integration
@pytest.mark.slow
def test_ham10000_train_and_audit_recomputed_with_pandas(shared_data, ham10000_cache, tmp_path, monkeypatch):
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    monkeypatch.setenv("MEDLENS_CACHE", str(ham10000_cache))
    table = shared_data / "ham10000" / "HAM10000_metadata.csv"
    run = tmp_path / "ham"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in HAM10000_OPTIONS.items()]
    assert main(["train", f"csv:{table}", *flags, "--size", "28", "--out", str(run), *QUICK]) == 0
    record = json.loads((run / "splits.json").read_text())
    owner = {}
    for split, lesions in record["groups"].items():
        for lesion in lesions:
            assert owner.setdefault(lesion, split) == split, f"lesion {lesion} in two splits"
    assert len(owner) == 7470 and record["group_column"] == "lesion_id"
    assert main(["evaluate", str(run), "--by", "sex,age", "--bins", "age:0,30,60,120", "--bootstrap", "100"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    predictions = pd.read_csv(run / "eval" / "test" / "predictions.csv")
    meta = pd.read_csv(table)
    meta["id"] = "images/" + meta["image_id"] + ".jpg"
    joined = predictions.merge(meta, on="id", how="left", validate="one_to_one")
    assert len(joined) == metrics["n"]
    joined["age_band"] = pd.cut(joined["age"], [0, 30, 60, 120], right=False, labels=["[0, 30)", "[30, 60)", "x"])
    joined["age_band"] = joined["age_band"].cat.rename_categories({"x": "[60, 120]"}).astype(str)
    joined.loc[joined["age"] == 120, "age_band"] = "[60, 120]"
    joined.loc[joined["age"].isna(), "age_band"] = "(missing)"
    classes = metrics["class_names"]
    for column, key in (("sex", "sex"), ("age", "age_band")):
        audited = {g["value"]: g for g in metrics["subgroups"]["columns"][column]["groups"]}
        expected = joined.groupby(key)
        assert set(audited) == set(expected.groups)
        for value, frame in expected:
            row = audited[value]
            assert row["n"] == len(frame)
            assert row["acc"] == pytest.approx((frame["true"] == frame["predicted"]).mean())
            aucs = [roc_auc_score(frame["true"] == name, frame[f"p_{name}"]) for name in classes
                    if 0 < (frame["true"] == name).sum() < len(frame)]
            if aucs:
                assert row["auc"] == pytest.approx(np.mean(aucs), abs=2e-3)  # probabilities kept to 6 digits
            recalls = [((frame["true"] == n) & (frame["predicted"] == n)).sum() / (frame["true"] == n).sum()
                       for n in classes if (frame["true"] == n).any()]
            assert row["sensitivity"] == pytest.approx(np.mean(recalls))


@pytest.mark.integration
@pytest.mark.slow
def test_ham10000_cv_five_grouped_folds_keep_every_lesion_in_one_fold(shared_data, ham10000_cache, tmp_path,
                                                                     monkeypatch):
    """The acceptance line `medlens cv` on HAM10000, 5 folds, lesion-grouped: no lesion in two folds."""
    monkeypatch.setenv("MEDLENS_CACHE", str(ham10000_cache))
    table = shared_data / "ham10000" / "HAM10000_metadata.csv"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in HAM10000_OPTIONS.items()]
    assert main(["cv", f"csv:{table}", *flags, "--size", "28", "--folds", "5", "--out", str(tmp_path / "cv"),
                 *QUICK]) == 0
    fold_of, test_lesions = {}, None
    for fold in range(5):
        record = json.loads(next((tmp_path / "cv").glob(f"fold{fold}*/splits.json")).read_text())
        groups = {split: set(lesions) for split, lesions in record["groups"].items()}
        assert not groups["train"] & groups["val"] and not groups["test"] & (groups["train"] | groups["val"])
        test_lesions = groups["test"] if test_lesions is None else test_lesions
        assert groups["test"] == test_lesions  # the test split is the same, untouched, in every fold
        for lesion in groups["val"]:
            assert fold_of.setdefault(lesion, fold) == fold, f"lesion {lesion} in folds {fold_of[lesion]} and {fold}"
    assert len(fold_of) + len(test_lesions) == 7470  # every lesion is validated in one fold, or is test
