"""No DICOM value reaches an error, a warning, a log line or a cache file (issue 20).

The probe: the folder loader printed ``could not convert string to float: 'PHIDOE^JOHNPHI'`` and,
with ``skip_bad``, wrote it into the cache's ``meta.json``. Here PHI is planted in every text
element of the DICOM dictionary, and in the numeric-string elements the decoder parses, and every
output of every decoding path is searched for it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.folder import load_folder
from medlens.data.readers import UnreadableImage, read_image

PHI = "PHIDOE^JOHNPHI"
MARKERS = ("PHIDOE", "JOHNPHI")
TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE"}
# Elements the decoder itself reads as numbers: text there makes the file unreadable on purpose, and
# the conversion's own message quotes it (``could not convert string to float: 'PHIDOE^JOHNPHI'``).
PARSED = ("WindowCenter", "WindowWidth")


def _dicom(*, parsed_phi: bool) -> bytes:
    """A 16-bit DICOM with PHI in every text element (and, with ``parsed_phi``, in the parsed numbers)."""
    import pydicom
    from pydicom.datadict import DicomDictionary
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    with pydicom.config.disable_value_validation():
        for tag, (vr, _, _, retired, _keyword) in DicomDictionary.items():
            if vr in TEXT_VRS and tag >> 16 not in (0x0000, 0x0002, 0x7FE0) and not retired:
                ds.add_new(tag, vr, PHI)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.Rows, ds.Columns = 16, 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = 500, 1000
        placeholder = "1" * len(PHI)  # a valid number as long as PHI: swapped for it in the bytes below
        if parsed_phi:
            for keyword in PARSED:
                setattr(ds, keyword, placeholder)
        ds.PixelData = np.arange(256, dtype=np.uint16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue().replace(placeholder.encode(), PHI.encode())
    assert data.count(PHI.encode()) > 500  # the planted values are really in the file
    return data


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _clean(text: str) -> bool:
    return not any(marker in text for marker in MARKERS)


@pytest.fixture
def dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(_png(10 * c + i))
    (root / "a" / "readable.dcm").write_bytes(_dicom(parsed_phi=False))
    (root / "b" / "patient.dcm").write_bytes(_dicom(parsed_phi=True))
    return root


def _cache_text(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (tmp_path / "cache").rglob("*.json"))


def test_the_folder_loader_never_shows_or_caches_a_dicom_value(dataset, tmp_path, capfd, caplog, recwarn):
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ValueError) as info:
            load_folder(dataset, size=8, workers=1)
        message = str(info.value)
        assert "b/patient.dcm (not a readable DICOM file (ValueError))" in message and _clean(message), message
        data = load_folder(dataset, size=8, skip_bad=True, workers=1)
        assert [name for name, _ in data.bad_files] == ["b/patient.dcm"]
        assert "a/readable.dcm" in set(data.ids)
        again = load_folder(dataset, size=8, skip_bad=True, workers=1)  # from the cache
        assert again.bad_files == data.bad_files
    assert _clean(json.dumps(data.bad_files)) and _clean(_cache_text(tmp_path))
    captured = capfd.readouterr()
    assert _clean(captured.out + captured.err)
    assert _clean(" ".join(r.getMessage() for r in caplog.records))
    assert _clean(" ".join(str(w.message) for w in recwarn))


def test_the_reader_and_the_predictor_never_show_a_dicom_value(capfd, caplog, recwarn):
    from medlens.engine.checkpoint import ModelCard
    from medlens.serve.predictor import InputError, Predictor

    good, bad = _dicom(parsed_phi=False), _dicom(parsed_phi=True)
    card = ModelCard(architecture="cnn_small", model_kwargs={}, task="binary", class_names=["x", "y"], in_channels=1,
                     spatial_dims=2, input_size=8, normalisation={"mean": [0.5], "std": [0.25]})
    predictor = Predictor(card, backend="torch", weights=Path("unused.safetensors"), model=object())
    with caplog.at_level(logging.DEBUG):
        assert read_image(good, "ok.dcm", size=8).pixels.shape == (8, 8)
        assert predictor.prepare(good, "ok.dcm", max_pixels=10_000).shape == (1, 8, 8)
        with pytest.raises(UnreadableImage) as info:
            read_image(bad, "bad.dcm", size=8)
        assert _clean(str(info.value)) and str(info.value) == "not a readable DICOM file (ValueError)"
        with pytest.raises(InputError) as info:
            predictor.prepare(bad, "bad.dcm", max_pixels=10_000)
        assert _clean(str(info.value)) and str(info.value).startswith("bad.dcm: not a readable DICOM file")
    captured = capfd.readouterr()
    assert _clean(captured.out + captured.err)
    assert _clean(" ".join(r.getMessage() for r in caplog.records))
    assert _clean(" ".join(str(w.message) for w in recwarn))
