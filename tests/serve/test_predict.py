"""Inference on files: decoding as in training, DICOM, NIfTI, bad files, the predict command, privacy.

Real 1-epoch runs on BreastMNIST (2D) and AdrenalMNIST3D (3D); every file is written here, from
real test images, with Pillow, pydicom and nibabel.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import single_line
from PIL import Image

from medlens.cli import main
from medlens.explain.render import overlay_png
from medlens.serve.inputs import expand_inputs
from medlens.serve.predictor import InputError, Predictor

PATIENT = ("Doe^Jane", "PID-4711-SECRET", "19610203", "20240517")  # name, id, birth date, study date

# DICOM pixel encoding used below: stored value s -> HU = 2 s - 1024; window centre -745, width 510
# spans HU -1000..-490, so s = t + 12 decodes to exactly t (0..255) when the reader applies
# rescale and window correctly.
SLOPE, INTERCEPT, CENTRE, WIDTH, OFFSET = 2.0, -1024.0, -745.0, 510.0, 12


@pytest.fixture(scope="module")
def breast(breast_run) -> Predictor:
    return Predictor.load(breast_run)


@pytest.fixture(scope="module")
def breast_test(medmnist_root) -> np.ndarray:
    return np.load(medmnist_root / "breastmnist.npz")["test_images"][:8]  # (8, 28, 28) uint8


@pytest.fixture(scope="module")
def adrenal_test(medmnist_root) -> np.ndarray:
    return np.load(medmnist_root / "adrenalmnist3d.npz")["test_images"][:3]  # (3, 28, 28, 28) uint8


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _dicom(stored: np.ndarray, *, photometric: str = "MONOCHROME2", patient: tuple | None = None) -> bytes:
    """A CT-like 16-bit DICOM file of ``stored`` ((H, W), or (F, H, W) for multi-frame)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if patient:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.StudyDate = patient
        ds.InstitutionName = "Secret General Hospital"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
    ds.WindowCenter, ds.WindowWidth = CENTRE, WIDTH
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _nifti(volume: np.ndarray, *, gz: bool = True) -> bytes:
    """NIfTI of a (D, H, W) volume, stored (x, y, z) = (W, H, D) with an identity affine (RAS)."""
    import nibabel as nib

    data = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), np.eye(4)).to_bytes()
    return gzip.compress(data) if gz else data


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no image data (a decompression-bomb stand-in)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------- prepare


@pytest.mark.integration
def test_png_and_jpeg_decode_like_the_training_data(breast, breast_test):
    image = breast_test[0]
    np.testing.assert_array_equal(breast.prepare(_png(image), "a.png"), image[None])
    jpeg = breast.prepare(_jpeg(image), "a.jpg")
    assert jpeg.shape == (1, 28, 28) and jpeg.dtype == np.uint8
    assert np.abs(jpeg.astype(int) - image).mean() < 3  # lossy, but the same picture
    # Larger images are resized to the model's 28 px; colour becomes luma for a 1-channel model.
    big = np.asarray(Image.fromarray(image).resize((112, 112), Image.Resampling.BILINEAR))
    assert breast.prepare(_png(big), "big.png").shape == (1, 28, 28)
    rgb = np.stack([image, np.roll(image, 3, axis=1), 255 - image], axis=-1)
    luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=int)
    assert np.abs(breast.prepare(_png(rgb), "colour.png")[0].astype(int) - luma).max() <= 1


@pytest.mark.integration
def test_gray_is_repeated_for_a_three_channel_model(breast, breast_test):
    three = Predictor(replace(breast.card, in_channels=3), backend="torch", weights=breast._weights,
                      model=breast._model)
    out = three.prepare(_png(breast_test[1]), "gray.png")
    assert out.shape == (3, 28, 28)
    assert all(np.array_equal(out[c], breast_test[1]) for c in range(3))


@pytest.mark.integration
def test_dicom_rescale_window_and_monochrome1(breast, breast_test):
    image = breast_test[2]
    mono2 = breast.prepare(_dicom(image.astype(np.uint16) + OFFSET), "scan.dcm")
    np.testing.assert_array_equal(mono2, image[None])  # rescale slope/intercept + window applied
    inverted_stored = (255 - image).astype(np.uint16) + OFFSET
    mono1 = breast.prepare(_dicom(inverted_stored, photometric="MONOCHROME1"), "scan1.dcm")
    np.testing.assert_array_equal(mono1, image[None])  # MONOCHROME1: low values are bright
    # The same stored pixels read as MONOCHROME2 are the inverted picture...
    plain = breast.prepare(_dicom(inverted_stored), "scan2.dcm")
    np.testing.assert_array_equal(plain, 255 - image[None])
    # ...so MONOCHROME1 predicts as the MONOCHROME2 image it shows, not as its stored values.
    probabilities = breast.predict(np.stack([mono1, mono2, plain]))
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)
    assert not np.allclose(probabilities[0], probabilities[2], atol=1e-4)


@pytest.mark.integration
def test_unusable_inputs_raise_input_error_naming_them(breast, adrenal_run, breast_test, adrenal_test):
    frames = np.stack([breast_test[0]] * 3).astype(np.uint16)
    cases = [
        (_dicom(frames), "cine.dcm", "multi-frame DICOM (3 frames)"),
        (b"\x89PNG\r\n\x1a\n garbage", "broken.png", "broken.png"),
        (b"hello", "notes.txt", "unsupported file type '.txt'"),
        (_nifti(adrenal_test[0]), "volume.nii.gz", "a 3D volume, but the model is 2D"),
        (_dicom(breast_test[0].astype(np.uint16))[:400], "header.dcm", "DICOM file has no pixel data"),
        (_dicom(breast_test[0].astype(np.uint16))[:-300], "cut.dcm", "not a readable DICOM file"),
    ]
    for data, name, reason in cases:
        with pytest.raises(InputError, match=reason.replace("(", r"\(").replace(")", r"\)")) as err:
            breast.prepare(data, name)
        assert single_line(err.value).startswith(name)
    volume_model = Predictor.load(adrenal_run)
    with pytest.raises(InputError, match="a 2D image, but the model is 3D"):
        volume_model.prepare(_png(breast_test[0]), "slice.png")
    with pytest.raises(InputError, match="multi-frame DICOM .* volumes from .nii"):
        volume_model.prepare(_dicom(frames), "cine.dcm")


@pytest.mark.integration
def test_max_pixels_is_checked_from_the_header(breast, breast_test, adrenal_run, adrenal_test):
    # Headers claiming huge images, with no pixel data: refused from the header alone.
    with pytest.raises(InputError, match="81,000,000 pixels is more than the limit of 1,000,000"):
        breast.prepare(_png_header_only(9_000, 9_000), "bomb.png", max_pixels=1_000_000)
    with pytest.raises(InputError, match=r"bomb.png: 3,600,000,000 pixels is more than the limit of 1,000,000"):
        breast.prepare(_png_header_only(60_000, 60_000), "bomb.png", max_pixels=1_000_000)  # past Pillow's own limit
    with pytest.raises(InputError, match="784 pixels is more than the limit of 700"):
        breast.prepare(_dicom(breast_test[0].astype(np.uint16)), "a.dcm", max_pixels=700)
    assert breast.prepare(_png(breast_test[0]), "a.png", max_pixels=784).shape == (1, 28, 28)
    # Bit depth counts (issue 20): a 16-bit image costs the decoder at least twice the bytes of an
    # 8-bit one of as many pixels, so the budget counts its bytes, not only its pixels.
    deep = _png(breast_test[0].astype(np.uint16) * 200)
    with pytest.raises(InputError, match=r"a.png: 784 pixels x [24] bytes = [0-9,]+ bytes decoded is more than the "
                                         r"limit of 1,000 \(a 16-bit or colour pixel counts as several"):
        breast.prepare(deep, "a.png", max_pixels=1_000)
    assert breast.prepare(deep, "a.png", max_pixels=4 * 784).shape == (1, 28, 28)
    with pytest.raises(InputError, match="784 pixels x 2 bytes = 1,568 bytes decoded"):
        breast.prepare(_dicom(breast_test[0].astype(np.uint16)), "a.dcm", max_pixels=1_000)
    volume_model = Predictor.load(adrenal_run)
    with pytest.raises(InputError, match="21,952 pixels is more than the limit of 10,000"):
        volume_model.prepare(_nifti(adrenal_test[0]), "v.nii.gz", max_pixels=10_000)
    # A small header followed by a stream that inflates far beyond it: stopped while inflating.
    padded = _nifti(adrenal_test[0], gz=False) + b"\x00" * (8 << 20)
    with pytest.raises(InputError, match="v.nii.gz: inflates to more than the 22,304 bytes its header declares"):
        volume_model.prepare(gzip.compress(padded), "v.nii.gz", max_pixels=10**6)
    np.testing.assert_array_equal(volume_model.prepare(_nifti(adrenal_test[0]), "v.nii.gz", max_pixels=10**6)[0],
                                  adrenal_test[0])
    npy = io.BytesIO()
    np.save(npy, adrenal_test[0])
    with pytest.raises(InputError, match="21,952 pixels"):
        volume_model.prepare(npy.getvalue(), "v.npy", max_pixels=10_000)


@pytest.mark.integration
def test_nifti_volumes_for_the_3d_model(adrenal_run, adrenal_test):
    predictor = Predictor.load(adrenal_run)
    for gz in (True, False):
        volume = predictor.prepare(_nifti(adrenal_test[0], gz=gz), "v.nii.gz" if gz else "v.nii")
        assert volume.shape == (1, 28, 28, 28) and volume.dtype == np.uint8
        # Adrenal masks are 0/255: the per-volume intensity scaling keeps them as they are.
        np.testing.assert_array_equal(volume[0], adrenal_test[0])
    probabilities = predictor.predict(adrenal_test[:, None])
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-6)
    heat = predictor.explain(adrenal_test[0][None])
    assert heat.shape == (28, 28, 28) and 0 <= heat.min() and heat.max() <= 1
    with pytest.raises(InputError, match="a 3D volume, but the model is 2D"):
        Predictor(replace(predictor.card, spatial_dims=2), backend="torch", weights=predictor._weights,
                  model=predictor._model).prepare(_nifti(adrenal_test[0]), "v.nii.gz")


# ------------------------------------------------------------------------ predict, explain, info


@pytest.mark.integration
def test_predict_batches_and_checks_its_input(breast, breast_test):
    images = breast_test[:, None]  # (8, 1, 28, 28)
    whole = breast.predict(images)
    assert whole.shape == (8, 2) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, atol=1e-6)
    small = Predictor(breast.card, backend="torch", weights=breast._weights, model=breast._model)
    small.batch_size = 3  # 3 + 3 + 2
    np.testing.assert_allclose(small.predict(images), whole, atol=1e-6)
    assert breast.predict(images[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match=r"uint8 \(B, 1, 28, 28\)"):
        breast.predict(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(8, 28, 28\)"):
        breast.predict(breast_test)


@pytest.mark.integration
def test_explain_and_overlay(breast, breast_test):
    image = breast_test[3][None]
    heat = breast.explain(image)
    assert heat.shape == (28, 28) and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
    predicted = int(breast.predict(image[None])[0].argmax())
    np.testing.assert_allclose(breast.explain(image, class_index=predicted), heat, atol=1e-6)
    with pytest.raises(ValueError, match="class_index must be an int in 0..1"):
        breast.explain(image, class_index=2)

    def decode(png: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(png)))

    assert decode(overlay_png(image, heat)).shape == (28, 28, 3)
    assert decode(overlay_png(image, heat, min_edge=256)).shape == (280, 280, 3)
    gray = decode(overlay_png(image, heat, alpha=0.0))  # no colour: the image itself
    assert all(np.array_equal(gray[..., c], image[0]) for c in range(3))
    hot = decode(overlay_png(np.zeros_like(image), np.ones((28, 28), np.float32), alpha=1.0))
    assert (hot[..., 0] > 100).all() and (hot[..., 2] < 50).all()  # jet: 1 is dark red
    volume = np.zeros((1, 5, 8, 8), np.uint8)
    volume[0, 2] = 200  # only the middle slice is bright
    assert decode(overlay_png(volume, np.zeros((5, 8, 8), np.float32), alpha=0.0))[..., 0].min() == 200
    with pytest.raises(ValueError, match="heatmap its spatial shape"):
        overlay_png(image, heat[:10])


@pytest.mark.integration
def test_info_describes_the_model(breast, breast_run):
    info = breast.info
    json.dumps(info, allow_nan=False)  # JSON-ready
    weights = (breast_run / "checkpoints" / "best.safetensors").read_bytes()
    assert info["version"] == hashlib.sha256(weights).hexdigest()[:12]
    assert info["architecture"] == "cnn_small" and info["task"] == "binary" and info["backend"] == "torch"
    assert info["class_names"] == ["malignant", "normal, benign"]
    assert (info["in_channels"], info["spatial_dims"], info["input_size"]) == (1, 2, 28)
    assert info["dataset"]["spec"] == "breastmnist@28" and info["test_metrics"]["n"] == 156
    assert info["medlens_version"]


def test_load_refuses_a_bad_backend_and_a_missing_run(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, got 'tflite'"):
        Predictor.load(tmp_path, backend="tflite")
    with pytest.raises(FileNotFoundError, match="best.safetensors"):
        Predictor.load(tmp_path)


# ------------------------------------------------------------------------------------ inputs


def test_expand_inputs_files_folders_and_globs(tmp_path):
    for name in ("b/2.png", "b/1.dcm", "b/deep/3.nii.gz", "b/readme.txt", "b/.hidden/4.png", "c/x.jpg", "c/y.JPG"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    folder = expand_inputs([str(tmp_path / "b")])
    assert [p.relative_to(tmp_path).as_posix() for p in folder] == ["b/1.dcm", "b/2.png", "b/deep/3.nii.gz"]
    mixed = expand_inputs([str(tmp_path / "c" / "*"), str(tmp_path / "b" / "readme.txt"),
                           str(tmp_path / "c" / "x.jpg")])
    assert [p.name for p in mixed] == ["x.jpg", "y.JPG", "readme.txt"]  # each once; a named file as is
    recursive = expand_inputs([str(tmp_path / "**" / "*.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in recursive] == ["b/2.png"]
    with pytest.raises(FileNotFoundError, match=r"no image file matches '.*\*\.bmp'"):
        expand_inputs([str(tmp_path / "b" / "2.png"), str(tmp_path / "*.bmp")])
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        expand_inputs([str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        expand_inputs([str(tmp_path / "empty")])


# ------------------------------------------------------------------------------ the command


def _read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def upload_folder(tmp_path_factory, breast_test) -> Path:
    """A folder of mixed files: good PNG/JPEG/DICOM, and three that cannot be predicted."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "png").mkdir()
    for i in range(3):
        (folder / "png" / f"case{i}.png").write_bytes(_png(breast_test[i]))
    (folder / "photo.jpg").write_bytes(_jpeg(breast_test[3]))
    (folder / "ct.dcm").write_bytes(_dicom(breast_test[4].astype(np.uint16) + OFFSET))
    (folder / "ct_mono1.dcm").write_bytes(
        _dicom((255 - breast_test[5]).astype(np.uint16) + OFFSET, photometric="MONOCHROME1"))
    (folder / "patient.dcm").write_bytes(_dicom(breast_test[6].astype(np.uint16) + OFFSET, patient=PATIENT))
    (folder / "patient_cine.dcm").write_bytes(_dicom(np.stack([breast_test[7]] * 2).astype(np.uint16), patient=PATIENT))
    (folder / "patient_cut.dcm").write_bytes(_dicom(breast_test[7].astype(np.uint16), patient=PATIENT)[:-300])
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return folder


GOOD = ["ct.dcm", "ct_mono1.dcm", "patient.dcm", "photo.jpg", "png/case0.png", "png/case1.png", "png/case2.png"]
BAD = ["patient_cine.dcm", "patient_cut.dcm", "zz_corrupt.png"]


def _assert_private(*texts: str) -> None:
    for text in texts:
        for secret in PATIENT + ("Doe", "Jane", "4711", "Secret General Hospital"):
            assert secret not in text, f"DICOM metadata {secret!r} leaked into the output"


@pytest.mark.integration
def test_predict_command_csv_json_and_table(breast_run, breast, breast_test, upload_folder, tmp_path, capfd):
    out_csv = tmp_path / "preds.csv"
    assert main(["predict", str(breast_run), str(upload_folder), "--out", str(out_csv)]) == 1  # some files failed
    stdout, stderr = capfd.readouterr()
    rows = _read_csv(out_csv)
    files = [Path(r["file"]).relative_to(upload_folder).as_posix() for r in rows]
    assert files == GOOD  # sorted, every readable file, only those
    for bad in BAD:
        assert f"medlens: cannot predict {upload_folder / bad}: " in stderr
    assert "multi-frame DICOM (2 frames)" in stderr and "3 of 10 file(s) could not be predicted" in stderr
    assert list(rows[0]) == ["file", "predicted", "probability", "p_malignant", "p_normal, benign", "ood_score", "ood"]

    # The command's numbers are Predictor.predict's on the same decoded arrays.
    arrays = np.stack([breast.prepare((upload_folder / f).read_bytes(), f) for f in GOOD])
    expected = breast.predict(arrays)
    got = np.array([[float(r["p_malignant"]), float(r["p_normal, benign"])] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    names = breast.card.class_names
    assert [r["predicted"] for r in rows] == [names[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected.max(1), atol=1e-7)
    # Each file predicts as the test image it was made from (DICOM: rescale, window, MONOCHROME1).
    source = {"ct.dcm": 4, "ct_mono1.dcm": 5, "patient.dcm": 6,
              "png/case0.png": 0, "png/case1.png": 1, "png/case2.png": 2}
    direct = breast.predict(breast_test[list(source.values())][:, None])
    np.testing.assert_allclose(got[[GOOD.index(f) for f in source]], direct, atol=1e-7)

    out_json = tmp_path / "preds.json"
    assert main(["predict", str(breast_run), *(str(upload_folder / f) for f in GOOD), "--out", str(out_json)]) == 0
    json_stdout, json_stderr = capfd.readouterr()
    records = json.loads(out_json.read_text())
    assert [r["file"] for r in records] == [str(upload_folder / f) for f in GOOD]
    np.testing.assert_allclose([[r["p_malignant"], r["p_normal, benign"]] for r in records], expected, atol=1e-7)

    assert main(["predict", str(breast_run), str(upload_folder / "patient.dcm"), str(upload_folder / "png")]) == 0
    table, table_err = capfd.readouterr()
    assert table.splitlines()[0].split()[:3] == ["file", "predicted", "probability"]
    assert f"{expected[GOOD.index('patient.dcm')].max():.4f}" in table and "case2.png" in table
    _assert_private(stdout, stderr, out_csv.read_text(), out_json.read_text(), json_stdout, json_stderr,
                    table, table_err)


@pytest.mark.integration
def test_predict_command_explain_writes_overlays(breast_run, upload_folder, tmp_path, capfd):
    overlays = tmp_path / "cams"
    files = [str(upload_folder / f) for f in ("ct.dcm", "photo.jpg", "png/case0.png", "zz_corrupt.png")]
    assert main(["predict", str(breast_run), *files, "--explain", str(overlays), "--batch-size", "2"]) == 1
    stdout, stderr = capfd.readouterr()
    assert sorted(p.name for p in overlays.iterdir()) == ["case0_gradcam.png", "ct_gradcam.png", "photo_gradcam.png"]
    with Image.open(overlays / "ct_gradcam.png") as png:
        assert png.mode == "RGB" and min(png.size) >= 256
    _assert_private(stdout, stderr)


@pytest.mark.integration
def test_predict_command_on_volumes(adrenal_run, adrenal_test, tmp_path, capfd):
    for i, volume in enumerate(adrenal_test):
        (tmp_path / f"vol{i}.nii.gz").write_bytes(_nifti(volume))
    (tmp_path / "slice.png").write_bytes(_png(adrenal_test[0, 14]))
    out = tmp_path / "preds.csv"
    assert main(["predict", str(adrenal_run), str(tmp_path / "*.nii.gz"), str(tmp_path / "slice.png"),
                 "--out", str(out), "--explain", str(tmp_path / "cams")]) == 1
    _, stderr = capfd.readouterr()
    assert "slice.png: a 2D image, but the model is 3D" in stderr
    rows = _read_csv(out)
    assert [Path(r["file"]).name for r in rows] == ["vol0.nii.gz", "vol1.nii.gz", "vol2.nii.gz"]
    expected = Predictor.load(adrenal_run).predict(adrenal_test[:, None])
    got = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == [f"vol{i}_gradcam.png" for i in range(3)]


@pytest.mark.integration
def test_predict_command_progress_and_user_errors(breast_run, breast_test, tmp_path, capfd):
    for i in range(51):
        (tmp_path / "many" / f"{i:02d}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "many" / f"{i:02d}.png").write_bytes(_png(breast_test[i % 8]))
    assert main(["predict", str(breast_run), str(tmp_path / "many"), "--out", str(tmp_path / "p.csv")]) == 0
    _, stderr = capfd.readouterr()
    assert "51/51" in stderr  # tqdm on stderr above 50 files
    assert len(_read_csv(tmp_path / "p.csv")) == 51

    assert main(["predict", str(breast_run), str(tmp_path / "many"), "--out", str(tmp_path / "p.xlsx")]) == 1
    assert "medlens: error: --out must end in .csv or .json, got" in capfd.readouterr().err
    assert main(["predict", str(breast_run), str(tmp_path / "nothing*.png")]) == 1
    assert "medlens: error: no image file matches" in capfd.readouterr().err
    assert main(["predict", str(breast_run), str(tmp_path / "many"), "--backend", "onnx"]) == 1
    assert "medlens export" in capfd.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(breast_run), str(tmp_path / "many"), "--batch-size", "0"])
    assert exit_info.value.code == 2


def test_non_finite_predictions_are_never_a_result(breast_run, breast_test, tmp_path, capsys):
    """NaN weights: `medlens predict` printed `malignant nan` and exited 0 (issue 20)."""
    import shutil

    import torch

    from medlens.engine.checkpoint import load_model, save_model
    from medlens.serve.predictor import NonFiniteOutput

    model, card = load_model(breast_run)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    predictor = Predictor(card, backend="torch", weights=Path(breast_run) / "checkpoints" / "best.safetensors",
                          model=model)
    with pytest.raises(NonFiniteOutput, match=r"NaN or infinite probabilities for 2 of 2 image"):
        predictor.predict(np.stack([predictor.prepare(_png(image), "a.png") for image in breast_test[:2]]))
    run = tmp_path / "run"
    shutil.copytree(Path(breast_run) / "checkpoints", run / "checkpoints")
    save_model(model, card, run / "checkpoints" / "best.safetensors")
    image = tmp_path / "a.png"
    image.write_bytes(_png(breast_test[0]))
    assert main(["predict", str(run), str(image)]) == 1
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower()
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and "holds NaN or infinite weights" in error[0], error
