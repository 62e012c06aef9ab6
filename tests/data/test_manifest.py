"""Tests for CSV manifests (``csv:PATH``), grouped splits, folder groups and tasks, and the leakage checks.

Unit tests write tiny manifests and images into tmp_path; integration tests (marked) use
../shared/data/ham10000 and ../shared/data/covid19, decoded at 28 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.manifest import load_manifest, read_table
from medlens.data.source import resolve, with_fold
from medlens.data.splits import grouped_partition, grouped_split, merge_groups
from helpers import HAM10000_OPTIONS, single_line


def _noise(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _image(path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(seed, size)).save(path)


def _table(path, header: list[str], rows: list[list], *, sep: str = ",", bom: bool = False) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")


def _patients(tmp_path, n_patients: int = 40, per_patient: int = 3):
    """A manifest of ``n_patients`` patients with ``per_patient`` images each; label by patient (0/1 alternating)."""
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            name = f"img/p{p:03d}_{k}.png"
            _image(tmp_path / name, seed=p * 10 + k)
            rows.append([f"P{p:03d}", name, "sick" if p % 4 == 0 else "well", "F" if p % 2 else "M", 20 + p])
    _table(tmp_path / "meta.csv", ["patient", "file", "dx", "sex", "age"], rows)
    return tmp_path / "meta.csv"


def test_manifest_with_image_column_keeps_metadata_and_groups(tmp_path):
    path = _patients(tmp_path, n_patients=20)
    data = load_manifest(path, size=8, options={"image_col": "file", "label_col": "dx", "group_col": "patient"})
    assert data.images.shape == (60, 1, 8, 8)
    assert data.class_names == ("sick", "well") and data.task == "binary"
    assert data.ids[0] == "img/p000_0.png"
    assert sorted(data.metadata.columns) == ["age", "sex"]
    assert data.metadata.groups[:3].tolist() == ["P000"] * 3
    assert data.metadata.columns["age"][3] == "21"


def test_image_pattern_bom_quoted_fields_and_tsv(tmp_path):
    for i in range(4):
        _image(tmp_path / "images" / f"ID{i}.png", seed=i)
    rows = [[f"ID{i}", "a, quoted" if i % 2 else "b", f"site {i}"] for i in range(4)]
    _table(tmp_path / "m.csv", ["image_id", "dx", "site"], rows, bom=True)
    data = load_manifest(tmp_path / "m.csv", size=8, options={"image_pattern": "images/{image_id}.png",
                                                              "label_col": "dx"})
    assert data.class_names == ("a, quoted", "b")
    assert data.ids.tolist() == [f"images/ID{i}.png" for i in range(4)]
    assert data.metadata.columns["site"].tolist() == [f"site {i}" for i in range(4)]
    _table(tmp_path / "m.tsv", ["image_id", "dx"], [[f"ID{i}", "x" if i < 2 else "y"] for i in range(4)], sep="\t")
    header, _ = read_table(tmp_path / "m.tsv")
    assert header == ["image_id", "dx"]
    assert load_manifest(tmp_path / "m.tsv", size=8, options={"image_pattern": "images/{image_id}.png",
                                                              "label_col": "dx"}).class_names == ("x", "y")


def test_every_bad_row_is_named_in_one_error_or_skipped_and_listed(tmp_path):
    for i in range(6):
        _image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [["0.png", "a", "train", "p0"], ["1.png", "b", "train", "p1"], ["missing.png", "a", "train", "p2"],
            ["2.png", "", "train", "p3"], ["3.png", "a", "holdout", "p4"], ["4.png", "b", "test", ""],
            ["broken.png", "a", "train", "p6"], ["0.png", "b", "train", "p7"], ["5.png", "a", "val", "p8"],
            ["notes.txt", "a", "train", "p9"]]
    _table(tmp_path / "m.csv", ["path", "label", "split", "pid"], rows)
    options = {"image_col": "path", "label_col": "label", "split_col": "split", "group_col": "pid"}
    with pytest.raises(ValueError) as err:
        load_manifest(tmp_path / "m.csv", size=8, options=options)
    message = single_line(err.value)
    assert "7 bad row(s)" in message
    for expected in ("line 4 (missing.png): missing file", "line 5 (2.png): empty label",
                     "unknown split 'holdout'", "empty group id", "line 8 (broken.png): unreadable",
                     "the same file as line 2", "unsupported file type .txt", "--skip-bad"):
        assert expected in message
    data = load_manifest(tmp_path / "m.csv", size=8, options=options, skip_bad=True)
    assert data.ids.tolist() == ["0.png", "1.png", "5.png"]
    assert len(data.bad_rows) == 7
    assert {s: idx.tolist() for s, idx in data.split_of.items()} == {"train": [0, 1], "val": [2]}


def test_unknown_column_lists_the_columns(tmp_path):
    _patients(tmp_path, n_patients=4)
    with pytest.raises(ValueError) as err:
        load_manifest(tmp_path / "meta.csv", options={"image_col": "file", "label_col": "diagnosis"})
    message = single_line(err.value)
    assert "'diagnosis'" in message and "patient, file, dx, sex, age" in message


def test_multilabel_from_columns_and_from_a_separator(tmp_path):
    for i in range(6):
        _image(tmp_path / f"{i}.png", seed=i)
    rows = [[f"{i}.png", int(i % 2 == 0), int(i % 3 == 0), "effusion|mass" if i % 2 else "mass"] for i in range(6)]
    _table(tmp_path / "m.csv", ["file", "effusion", "mass", "findings"], rows)
    by_columns = load_manifest(tmp_path / "m.csv", size=8, options={"label_col": "effusion,mass"})
    assert by_columns.task == "multilabel" and by_columns.class_names == ("effusion", "mass")
    assert by_columns.labels.tolist() == [[1, 1], [0, 0], [1, 0], [0, 1], [1, 0], [0, 0]]
    assert "findings" in by_columns.metadata.columns
    by_sep = load_manifest(tmp_path / "m.csv", size=8, options={"label_col": "findings", "label_sep": "|"})
    assert by_sep.class_names == ("effusion", "mass")
    assert by_sep.labels.tolist() == [[0, 1], [1, 1]] * 3
    with pytest.raises(ValueError, match="several label columns"):
        load_manifest(tmp_path / "m.csv", size=8, options={"label_col": "findings", "task": "multilabel"})


def test_3d_npy_volumes(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(tmp_path / f"v{i}.npy", rng.integers(0, 255, (6, 6, 6), dtype=np.uint8))
    _table(tmp_path / "m.csv", ["file", "label"], [[f"v{i}.npy", i % 2] for i in range(4)])
    data = load_manifest(tmp_path / "m.csv", size=4)
    assert data.images.shape == (4, 1, 4, 4, 4)
    assert data.class_names == ("0", "1")


def test_ordinal_task_and_class_order(tmp_path):
    grades = ["mild", "none", "severe", "moderate"] * 10
    for i in range(len(grades)):
        _image(tmp_path / f"{i}.png", seed=i)
    _table(tmp_path / "m.csv", ["file", "grade"], [[f"{i}.png", g] for i, g in enumerate(grades)])
    order = "none,mild,moderate,severe"
    source = resolve(f"csv:{tmp_path / 'm.csv'}@8", ratios="0.5/0.25/0.25",
                     source_options={"label_col": "grade", "task": "ordinal", "class_order": order})
    assert source.info.task.value == "ordinal"
    assert source.info.class_names == ("none", "mild", "moderate", "severe")
    with pytest.raises(ValueError, match="class_order"):
        load_manifest(tmp_path / "m.csv", size=8, options={"label_col": "grade", "class_order": "none,mild"})


def test_numeric_grades_sort_as_numbers(tmp_path):
    for i in range(12):
        _image(tmp_path / f"{i}.png", seed=i)
    _table(tmp_path / "m.csv", ["file", "grade"], [[f"{i}.png", [2, 10, 1][i % 3]] for i in range(12)])
    assert load_manifest(tmp_path / "m.csv", size=8, options={"label_col": "grade"}).class_names == ("1", "2", "10")


def test_grouped_split_keeps_patients_together_and_records_them(tmp_path):
    path = _patients(tmp_path, n_patients=40)
    source = resolve(f"csv:{path}@8", source_options={"image_col": "file", "label_col": "dx",
                                                      "group_col": "patient"})
    assert source.split_method == "grouped-stratified"
    owners = {}
    for name in ("train", "val", "test"):
        for group in source.groups_of(name):
            owners.setdefault(group, set()).add(name)
    assert all(len(splits) == 1 for splits in owners.values()) and len(owners) == 40
    # 40 patients of 3 images, 0.8/0.1/0.1: whole patients, so 32/4/4 patients = 96/12/12 images
    assert [len(source.splits[s]) for s in ("train", "val", "test")] == [96, 12, 12]
    record = json.loads(source.save_splits(tmp_path / "splits.json").read_text())
    assert record["group_column"] == "patient"
    assert record["metadata_columns"] == ["age", "sex"]
    assert set(record["groups"]["test"]) == set(source.groups_of("test").tolist())
    folded = with_fold(source, folds=4, fold=1)
    assert not set(folded.groups_of("train")) & set(folded.groups_of("val"))
    assert folded.split_method.endswith("grouped-fold1/4")


def test_grouped_partition_meets_ratios_within_a_group():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 5, size=300)  # 300 patients of 1-4 images
    groups = np.repeat(np.arange(300), sizes)
    labels = np.repeat(rng.integers(0, 3, size=300), sizes)
    parts = grouped_split(labels, groups, ratios=(0.7, 0.15, 0.15), seed=1)
    n = len(labels)
    for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[name]) / n - share) * n <= sizes.max() * 3  # within a few groups' sizes
        # class ratios follow the whole set's
        whole = np.bincount(labels, minlength=3) / n
        part = np.bincount(labels[parts[name]], minlength=3) / len(parts[name])
        assert np.abs(part - whole).max() < 0.05
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(n))
    owner = {}
    for name, rows in parts.items():
        for g in np.unique(groups[rows]):
            assert owner.setdefault(int(g), name) == name
    with pytest.raises(ValueError, match="at least 3 groups"):
        grouped_partition(labels[:2], np.array([0, 1]), {"train": .8, "val": .1, "test": .1})


def test_merge_groups_joins_patients_and_identical_images():
    patients = np.array(["a", "a", "b", "c", "d"])
    identical = np.array([0, 1, 2, 2, 4])  # rows 2 and 3 are one image filed under b and c
    assert merge_groups(patients, identical).tolist() == [0, 0, 1, 1, 2]


def test_split_column_with_patients_in_two_splits_is_reported(tmp_path):
    path = _patients(tmp_path, n_patients=12)
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0] + ["split"], [r + ["test" if i % 3 == 0 else "train"] for i, r in enumerate(rows[1:])]
    _table(path, header, body)
    source = resolve(f"csv:{path}@8", source_options={"image_col": "file", "label_col": "dx",
                                                      "group_col": "patient", "split_col": "split"})
    assert source.split_method == "column+grouped-val"
    groups = source.leakage["groups"]
    assert groups["column"] == "patient" and groups["count"] == 12
    assert any("patient leakage" in w and "patient(s)" in w for w in source.warnings)


def test_near_identical_copies_across_splits_are_found(tmp_path):
    for i in range(30):
        _image(tmp_path / f"{i}.png", seed=i, size=64)
    # a resized, JPEG re-encoded copy of image 0 under another name
    Image.open(tmp_path / "0.png").resize((48, 48)).save(tmp_path / "copy.jpg", quality=80)
    rows = [[f"{i}.png", i % 2, "train"] for i in range(30)] + [["copy.jpg", 0, "test"]]
    rows[1][2] = "test"
    _table(tmp_path / "m.csv", ["file", "label", "split"], rows)
    source = resolve(f"csv:{tmp_path / 'm.csv'}@32", source_options={"split_col": "split"})
    near = source.leakage["near_identical"]
    assert near["count"] == 1 and "0.png (" in near["examples"][0] and "~ copy.jpg (test)" in near["examples"][0]
    assert source.leakage["identical"]["count"] == 0


def test_folder_group_regex_task_and_class_order(tmp_path):
    for p in range(20):
        for k in range(2):
            grade = str(p % 3)
            _image(tmp_path / "ds" / grade / f"P{p:02d}_{k}.png", seed=p * 2 + k)
    source = resolve(f"folder:{tmp_path / 'ds'}@8", source_options={
        "group_regex": r"^(P\d+)_", "task": "ordinal", "class_order": "2,1,0"})
    assert source.info.task.value == "ordinal" and source.info.class_names == ("2", "1", "0")
    assert source.split_method == "grouped-stratified"
    train = set(source.groups_of("train"))
    assert not train & set(source.groups_of("test")) and not train & set(source.groups_of("val"))
    ids = source.splits["train"].ids.tolist()
    labels = source.splits["train"].labels.tolist()
    assert all(source.info.class_names[label] == i.split("/")[0] for i, label in zip(ids, labels, strict=True))
    with pytest.raises(ValueError, match="matches none"):
        resolve(f"folder:{tmp_path / 'ds'}@8", source_options={"group_regex": r"^Q(\d+)"})
    with pytest.raises(ValueError, match="csv: manifests"):
        resolve(f"folder:{tmp_path / 'ds'}@8", source_options={"label_col": "dx"})


# --------------------------------------------------------------------------------------------
# integration: HAM10000 (one decode at 28 px for the session), COVID-19
# --------------------------------------------------------------------------------------------


@pytest.fixture
def ham10000(shared_data, ham10000_cache, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE", str(ham10000_cache))
    return resolve(f"csv:{shared_data / 'ham10000' / 'HAM10000_metadata.csv'}@28", source_options=HAM10000_OPTIONS)


@pytest.mark.integration
def test_ham10000_no_lesion_crosses_splits_or_folds(ham10000):
    source = ham10000
    assert sum(len(s) for s in source.splits.values()) == 10015
    owner = {}
    for name in ("train", "val", "test"):
        for lesion in source.groups_of(name).tolist():
            assert owner.setdefault(lesion, name) == name
    assert len(owner) == 7470
    assert source.leakage["groups"]["count"] == 0
    seen = {}
    for fold in range(5):
        folded = with_fold(source, folds=5, fold=fold)
        val = set(folded.groups_of("val").tolist())
        assert not val & set(folded.groups_of("train").tolist())
        assert not val & set(folded.groups_of("test").tolist())
        for lesion in val:
            assert seen.setdefault(lesion, fold) == fold
    assert len(seen) == len(set(ham10000.groups_of("train")) | set(ham10000.groups_of("val")))


@pytest.mark.integration
def test_covid19_reports_identical_and_near_identical_cross_split_copies(shared_data):
    source = resolve(f"folder:{shared_data / 'covid19'}@64")
    assert source.leakage["identical"]["count"] == 6
    assert all("(test)" in example for example in source.leakage["identical"]["examples"][:5])
    near = source.leakage["near_identical"]
    assert near["max_bits"] == 2 and near["count"] >= 1
    assert any("near-identical" in warning for warning in source.warnings)


def test_perceptual_hashes_are_cached_on_disk(tmp_path, monkeypatch):
    from medlens.data import leakage

    path = _patients(tmp_path, n_patients=12)
    options = {"image_col": "file", "label_col": "dx"}
    first = resolve(f"csv:{path}@16", ratios="0.5/0.25/0.25", source_options=options).leakage
    import os

    assert len(list((Path(os.environ["MEDLENS_CACHE"]) / "phash").glob("*.npz"))) == 1
    leakage._HASHES.clear()
    calls = []
    monkeypatch.setattr("imagehash.phash", lambda image: calls.append(image))
    again = resolve(f"csv:{path}@16", ratios="0.5/0.25/0.25", source_options=options).leakage
    assert calls == [] and again == first


def test_close_pairs_by_banding_equal_all_pairs_comparison():
    from medlens.data.leakage import _close_pairs

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    hashes[10] = hashes[5] ^ np.uint64(3)  # 2 bits apart
    hashes[20] = hashes[7] ^ np.uint64(1 << 40)  # 1 bit
    hashes[30] = hashes[7] ^ np.uint64(0b10101 << 50)  # 3 bits
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    for bits in (0, 1, 2, 3, 4):
        expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(distance <= bits, k=1)), strict=True)}
        assert {(a, b) for a, b, _ in _close_pairs(hashes, bits)} == expected


@pytest.mark.timeout(60)
def test_a_row_naming_a_fifo_or_a_dangling_link_is_a_bad_row_never_opened(tmp_path):
    """Reading a FIFO blocks for ever (issue 20's folder finding): a manifest row naming one is a
    bad row, as the folder walk makes it, and so is a link that leads nowhere."""
    import os

    for i in range(4):
        _image(tmp_path / f"{i}.png", seed=i)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    rows = [["0.png", "a"], ["1.png", "b"], ["2.png", "a"], ["3.png", "b"], ["pipe.png", "a"], ["gone.png", "b"]]
    _table(tmp_path / "m.csv", ["path", "label"], rows)
    options = {"image_col": "path", "label_col": "label"}
    with pytest.raises(ValueError) as err:
        load_manifest(tmp_path / "m.csv", size=8, options=options)
    message = single_line(err.value)
    assert "2 bad row(s)" in message and "pipe.png" in message and "gone.png" in message
    data = load_manifest(tmp_path / "m.csv", size=8, options=options, skip_bad=True)
    assert data.ids.tolist() == ["0.png", "1.png", "2.png", "3.png"]
