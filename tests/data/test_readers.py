"""Unit tests for medlens.data.readers: one file's bytes -> uint8 pixels at a target size."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from medlens.data.readers import Decoded, UnreadableImage, dicom_to_uint8, file_suffix, read_image
from helpers import single_line

# --------------------------------------------------------------------------------------------
# helpers: build tiny files in memory
# --------------------------------------------------------------------------------------------


def _pillow_bytes(arr: np.ndarray, fmt: str, **save_kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **save_kw)
    return buf.getvalue()


def _halves(h: int = 32, w: int = 32) -> np.ndarray:
    """Left half dark (20), right half bright (220): survives resizing and JPEG."""
    arr = np.full((h, w), 20, dtype=np.uint8)
    arr[:, w // 2:] = 220
    return arr


def _dicom_dataset():
    """An empty DICOM dataset with file meta (explicit VR little endian, secondary capture)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def _dicom_bytes(arr: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> bytes:
    """A minimal valid DICOM (explicit VR little endian, 16-bit unsigned, 1 sample per pixel).

    ``arr`` is ``(H, W)`` or ``(frames, H, W)``; extra keyword arguments become data elements.
    """
    ds = _dicom_dataset()
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(arr, dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ramp_dicom_array() -> np.ndarray:
    """10x10 stored values 0, 10, ..., 990 in row-major order."""
    return (np.arange(100, dtype=np.uint16) * 10).reshape(10, 10)


def _nifti_bytes(volume: np.ndarray, gz: bool = False) -> bytes:
    import nibabel as nib

    data = nib.Nifti1Image(volume, affine=np.eye(4)).to_bytes()
    return gzip.compress(data) if gz else data


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()



# --------------------------------------------------------------------------------------------
# file_suffix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("a/b/scan.NII.GZ", ".nii.gz"), ("x.Png", ".png"), ("dir.v2/noext", ""), ("a.tar.gz", ".gz")],
)
def test_file_suffix(name, suffix):
    assert file_suffix(name) == suffix


# --------------------------------------------------------------------------------------------
# Pillow formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,name", [("PNG", "a.png"), ("JPEG", "a.jpg"), ("JPEG", "a.jpeg"),
                                      ("BMP", "a.bmp"), ("TIFF", "a.tif"), ("TIFF", "a.tiff")])
def test_pillow_gray_formats_resized_and_content_kept(fmt, name):
    data = _pillow_bytes(_halves(40, 40), fmt)
    out = read_image(data, name, size=16)
    assert isinstance(out, Decoded)
    assert out.spatial_dims == 2
    assert out.pixels.dtype == np.uint8
    assert out.pixels.shape == (16, 16)
    # left side stays dark, right side stays bright after resize (and JPEG loss)
    assert out.pixels[:, :6].mean() < 40
    assert out.pixels[:, -6:].mean() > 200


def test_size_none_keeps_native_size():
    out = read_image(_pillow_bytes(_halves(30, 40), "PNG"), "x.png", size=None)
    assert out.pixels.shape == (30, 40)
    np.testing.assert_array_equal(out.pixels, _halves(30, 40))


def test_non_square_image_becomes_square():
    out = read_image(_pillow_bytes(_halves(30, 50), "PNG"), "x.png", size=12)
    assert out.pixels.shape == (12, 12)


def test_png_exact_size_is_lossless():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    out = read_image(_pillow_bytes(arr, "PNG"), "x.png", size=16)
    np.testing.assert_array_equal(out.pixels, arr)


def test_16bit_png_scaled_to_full_uint8_range():
    arr = np.linspace(0, 40000, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = _pillow_bytes(arr, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    out = read_image(data, "deep.png", size=None)
    px = out.pixels
    assert px.dtype == np.uint8 and px.shape == (64, 64)
    assert px.min() == 0 and px.max() == 255
    flat = px.reshape(-1).astype(int)
    assert (np.diff(flat) >= 0).all(), "ordering of intensities must be preserved"
    # not simply truncated to the low byte: the middle of the ramp is mid-grey
    assert 100 < px[32, 0] < 160


def test_rgb_with_equal_channels_is_gray():
    gray = _halves(20, 20)
    rgb = np.stack([gray, gray, gray], axis=-1)
    out = read_image(_pillow_bytes(rgb, "PNG"), "rgb.png", size=10)
    assert out.pixels.shape == (10, 10)


def test_rgb_colour_is_kept_as_three_channels():
    rgb = np.zeros((20, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 30
    out = read_image(_pillow_bytes(rgb, "PNG"), "red.png", size=10)
    assert out.pixels.shape == (10, 10, 3)
    assert out.pixels[..., 0].min() >= 195
    assert out.pixels[..., 1].max() <= 5
    assert 25 <= out.pixels[..., 2].mean() <= 35


def test_rgba_png_drops_alpha():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 1] = 180
    rgba[..., 3] = 255
    out = read_image(_pillow_bytes(rgba, "PNG"), "a.png", size=None)
    assert out.pixels.shape == (8, 8, 3)
    assert (out.pixels[..., 1] == 180).all()


def test_truncated_png_is_unreadable_with_one_line_reason():
    rng = np.random.default_rng(1)
    data = _pillow_bytes(rng.integers(0, 256, (32, 32), dtype=np.uint8), "PNG")
    with pytest.raises(UnreadableImage) as info:
        read_image(data[: len(data) // 2], "cut.png", size=16)
    assert "truncated" in single_line(info.value).lower()


def test_garbage_bytes_are_unreadable():
    with pytest.raises(UnreadableImage) as info:
        read_image(b"not an image at all", "fake.jpg", size=16)
    single_line(info.value)


def test_unreadable_image_is_a_value_error():
    assert issubclass(UnreadableImage, ValueError)


@pytest.mark.parametrize("name", ["notes.txt", "README", "scan.mha"])
def test_unsupported_suffix_is_named(name):
    with pytest.raises(UnreadableImage) as info:
        read_image(b"hello", name, size=16)
    text = single_line(info.value)
    assert "unsupported" in text
    assert (file_suffix(name) or "(none)") in text
    assert ".png" in text  # lists what is supported


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def test_dicom_monochrome2_scaled_and_resized():
    arr = _ramp_dicom_array()
    data = _dicom_bytes(arr)
    full = dicom_to_uint8(data)
    assert full.dtype == np.uint8 and full.shape == (10, 10)
    assert full[0, 0] == 0 and full[-1, -1] == 255
    assert (np.diff(full.reshape(-1).astype(int)) >= 0).all()
    out = read_image(data, "slice.dcm", size=4)
    assert out.spatial_dims == 2
    assert out.pixels.shape == (4, 4)
    assert out.pixels[0, 0] < out.pixels[-1, -1]


def test_dicom_suffix_dicom_is_read_too():
    out = read_image(_dicom_bytes(_ramp_dicom_array()), "SLICE.DICOM", size=None)
    assert out.pixels.shape == (10, 10)


def test_dicom_monochrome1_is_inverted():
    arr = _ramp_dicom_array()
    mono2 = dicom_to_uint8(_dicom_bytes(arr, "MONOCHROME2"))
    mono1 = dicom_to_uint8(_dicom_bytes(arr, "MONOCHROME1"))
    # the highest stored value is the darkest pixel in MONOCHROME1
    assert mono1[-1, -1] == 0 and mono1[0, 0] == 255
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_dicom_rescale_slope_is_applied():
    """A negative slope flips the order of values: the modality LUT must run before scaling."""
    arr = _ramp_dicom_array()
    plain = dicom_to_uint8(_dicom_bytes(arr))
    flipped = dicom_to_uint8(_dicom_bytes(arr, RescaleSlope=-1, RescaleIntercept=0))
    assert flipped[0, 0] == 255 and flipped[-1, -1] == 0
    np.testing.assert_array_equal(flipped.astype(int), 255 - plain.astype(int))


def test_dicom_window_centre_width():
    arr = _ramp_dicom_array()  # stored 0..990
    out = dicom_to_uint8(_dicom_bytes(arr, WindowCenter=500, WindowWidth=400))
    flat = out.reshape(-1).astype(int)
    values = arr.reshape(-1)
    assert (flat[values <= 300] == 0).all()  # below centre - width/2 -> black
    assert (flat[values >= 700] == 255).all()  # above centre + width/2 -> white
    assert abs(int(out.reshape(-1)[50]) - 128) <= 2  # value 500 at the centre -> mid grey
    assert (np.diff(flat) >= 0).all()


def test_dicom_rescale_then_window():
    """The window is in rescaled (modality) units: slope 2, intercept -100 map 500 -> 900."""
    arr = _ramp_dicom_array()  # stored 0..990 -> rescaled -100..1880
    out = dicom_to_uint8(_dicom_bytes(arr, RescaleSlope=2, RescaleIntercept=-100,
                                      WindowCenter=900, WindowWidth=1000))
    by_value = dict(zip(arr.reshape(-1).tolist(), out.reshape(-1).astype(int).tolist(), strict=True))
    assert by_value[250] <= 1  # rescaled 400 = window bottom
    assert by_value[200] == 0
    assert abs(by_value[500] - 128) <= 2  # rescaled 900 = centre
    assert by_value[750] >= 254  # rescaled 1400 = window top
    assert by_value[990] == 255


def test_dicom_multi_valued_window_uses_first():
    arr = _ramp_dicom_array()
    first_only = dicom_to_uint8(_dicom_bytes(arr, WindowCenter=500, WindowWidth=400))
    multi = dicom_to_uint8(_dicom_bytes(arr, WindowCenter=[500, 100], WindowWidth=[400, 50]))
    np.testing.assert_array_equal(multi, first_only)


def test_dicom_multi_frame_is_refused_clearly():
    frames = np.stack([_ramp_dicom_array()] * 3)
    with pytest.raises(UnreadableImage) as info:
        read_image(_dicom_bytes(frames), "cine.dcm", size=8)
    text = single_line(info.value)
    assert "multi-frame" in text and "3 frames" in text


def test_dicom_without_pixel_data_is_refused():
    ds = _dicom_dataset()
    ds.Modality = "OT"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(UnreadableImage, match="no pixel data"):
        read_image(buf.getvalue(), "empty.dcm", size=8)


def test_dicom_garbage_is_unreadable():
    with pytest.raises(UnreadableImage) as info:
        read_image(b"\x00" * 10, "broken.dcm", size=8)
    single_line(info.value)


# --------------------------------------------------------------------------------------------
# NIfTI and .npy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz,name", [(False, "vol.nii"), (True, "vol.nii.gz")])
def test_nifti_is_3d_and_resized_to_cube(gz, name):
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(10, 12, 14)).astype(np.float32)
    out = read_image(_nifti_bytes(volume, gz=gz), name, size=8)
    assert out.spatial_dims == 3
    assert out.pixels.dtype == np.uint8
    assert out.pixels.shape == (8, 8, 8)
    assert out.pixels.max() > out.pixels.min()


def test_nifti_axes_become_depth_height_width():
    # NIfTI (x, y, z) -> (z, y, x); a gradient along x must run along the last axis
    volume = np.zeros((4, 6, 8), dtype=np.float32)
    volume += np.arange(4, dtype=np.float32)[:, None, None]
    out = read_image(_nifti_bytes(volume), "v.nii", size=None)
    assert out.pixels.shape == (8, 6, 4)
    assert out.pixels[0, 0, 0] == 0 and out.pixels[0, 0, -1] == 255
    assert (out.pixels[:, :, 1] == out.pixels[0, 0, 1]).all()


def test_nifti_uncompressed_bytes_with_gz_name_and_vice_versa():
    volume = np.arange(5 * 5 * 5, dtype=np.float32).reshape(5, 5, 5)
    a = read_image(_nifti_bytes(volume, gz=True), "v.nii.gz", size=None).pixels
    b = read_image(_nifti_bytes(volume, gz=False), "v.nii", size=None).pixels
    np.testing.assert_array_equal(a, b)


def test_nifti_4d_with_singleton_time_is_accepted_other_4d_refused():
    volume = np.ones((5, 5, 5, 1), dtype=np.float32)
    assert read_image(_nifti_bytes(volume), "v.nii", size=4).pixels.shape == (4, 4, 4)
    with pytest.raises(UnreadableImage) as info:
        read_image(_nifti_bytes(np.ones((5, 5, 5, 2), dtype=np.float32)), "t.nii", size=4)
    assert "3-D" in single_line(info.value)


def test_nifti_garbage_is_unreadable():
    with pytest.raises(UnreadableImage) as info:
        read_image(b"nonsense" * 20, "v.nii.gz", size=4)
    single_line(info.value)


def test_npy_2d_is_an_image():
    arr = np.arange(20 * 30, dtype=np.float64).reshape(20, 30)
    out = read_image(_npy_bytes(arr), "slice.npy", size=10)
    assert out.spatial_dims == 2
    assert out.pixels.shape == (10, 10) and out.pixels.dtype == np.uint8
    assert out.pixels[0, 0] < out.pixels[-1, -1]


def test_npy_uint8_2d_native_size_unchanged():
    arr = np.random.default_rng(3).integers(0, 256, (9, 7), dtype=np.uint8)
    out = read_image(_npy_bytes(arr), "a.npy", size=None)
    np.testing.assert_array_equal(out.pixels, arr)


def test_npy_3d_is_a_volume():
    arr = np.random.default_rng(4).normal(size=(6, 10, 12)).astype(np.float32)
    out = read_image(_npy_bytes(arr), "vol.npy", size=8)
    assert out.spatial_dims == 3
    assert out.pixels.shape == (8, 8, 8)


def test_npy_leading_singleton_is_dropped():
    arr = np.zeros((1, 4, 5, 6), dtype=np.uint8)
    out = read_image(_npy_bytes(arr), "vol.npy", size=None)
    assert out.spatial_dims == 3 and out.pixels.shape == (4, 5, 6)


@pytest.mark.parametrize("shape", [(5,), (5, 1), (2, 3, 4, 5)])
def test_npy_bad_shapes_are_refused_naming_the_shape(shape):
    with pytest.raises(UnreadableImage) as info:
        read_image(_npy_bytes(np.zeros(shape, dtype=np.float32)), "x.npy", size=4)
    assert str(shape) in single_line(info.value)


def test_npy_with_pickled_objects_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableImage):
        read_image(buf.getvalue(), "obj.npy", size=4)


def test_non_finite_values_do_not_crash():
    arr = np.ones((8, 8), dtype=np.float32)
    arr[0, 0] = np.nan
    arr[1, 1] = np.inf
    arr[2:, :] = 5
    out = read_image(_npy_bytes(arr), "nan.npy", size=None)
    assert out.pixels.dtype == np.uint8
    assert out.pixels[7, 7] == 255


def test_colour_npy_is_a_2d_image():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    decoded = read_image(_npy_bytes(rgb), "photo.npy", size=16)
    assert decoded.spatial_dims == 2 and decoded.pixels.shape == (16, 16, 3)
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 255, np.uint8)], axis=-1)
    assert read_image(_npy_bytes(rgba), "photo.npy", size=16).pixels.shape == (16, 16, 3)


def test_nifti_orientation_is_canonical():
    """The same anatomy stored left-right flipped (negative x in the affine) reads the same."""
    import nibabel as nib

    volume = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped_affine[0, 3] = 5.0
    as_stored = nib.Nifti1Image(volume, affine=np.eye(4)).to_bytes()
    mirrored = nib.Nifti1Image(volume[::-1].copy(), affine=flipped_affine).to_bytes()
    a = read_image(as_stored, "a.nii", size=None).pixels
    b = read_image(mirrored, "b.nii", size=None).pixels
    np.testing.assert_array_equal(a, b)
