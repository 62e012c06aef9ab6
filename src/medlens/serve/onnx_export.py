"""Export a run's best model to ONNX, verified against torch on the model's own test images.

The exported graph is the whole inference path, so any ONNX runtime can use it without medlens.
It is :class:`medlens.inference.InferenceModel` traced, the module the torch backend runs, so the
two share their normalisation constants and activation by construction:

    uint8 images (B, C, *spatial) --cast, (x / 255 - mean) / std--> model --softmax | sigmoid--> (B, K)

Input ``images`` (uint8, dynamic batch axis), output ``probabilities`` (float32). Files written
beside the run, each atomically:

    RUN/export/model.onnx    the graph and weights
    RUN/export/model.json    the model card + {"onnx": {opset, input_name, output_name}}, the
                             SHA-256 of the checkpoint it came from and of model.onnx itself
                             (both checked when it is loaded), and the verification result

Before ``model.onnx`` appears under its name, ONNX Runtime runs it on real test images of the
dataset the model was trained on (``card.dataset["spec"]``), and the probabilities must agree
with torch's to ``atol`` (default 1e-4); otherwise nothing is written and ValueError is raised.

Example:
    >>> export_onnx("runs/breast")  # doctest: +SKIP
    PosixPath('runs/breast/export/model.onnx')
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medlens._io import atomic_path, file_sha256
from medlens.engine.run_folder import RunFolder, sidecar
from medlens.serve.predictor import _onnx_session

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def _export(graph: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.onnx.export`` with the torch.export-based exporter and a dynamic batch axis."""
    import logging
    import warnings

    # The exporter logs one line per torchvision operator it cannot register (torchvision is not
    # a dependency) and pytree emits a FutureWarning: neither concerns the exported graph.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                graph, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, opset_version=OPSET,
                dynamo=True, external_data=False, verbose=False, optimize=True,
            )
    finally:
        registration.setLevel(level)


def _test_images(card, folder: RunFolder, *, root: str | os.PathLike | None, limit: int) -> np.ndarray:
    """Up to ``limit`` uint8 test images of the model's own dataset (spec and split settings of the card)."""
    from medlens.data.source import resolve

    spec = card.dataset.get("spec")
    if not spec:
        raise ValueError("the model card names no dataset (card.dataset['spec']); cannot verify the export")
    config = card.config if isinstance(card.config, dict) else {}
    data = config.get("data", {})
    # The card's config is the run's: a checkpoint kept outside its run folder finds its data too.
    root = folder.data_root(root, config=config)
    try:
        source = resolve(spec, root=root, download_missing=False, seed=data.get("split_seed", 0),
                         ratios=data.get("ratios", "0.8/0.1/0.1"), channels=data.get("channels"),
                         source_options=data.get("source_options"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"the test images of {spec} are needed to verify the export: {exc} "
                                "(set $MEDLENS_DATA or pass --root)") from None
    images = np.asarray(source.splits["test"].images[:limit])
    if not len(images):
        raise ValueError(f"{spec} has no test images to verify the export with")
    return np.ascontiguousarray(images)


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    n_verify: int = 256,
    atol: float = 1e-4,
) -> Path:
    """Export the best model of ``run`` to ONNX and verify it with ONNX Runtime.

    Args:
        run: a run folder (its ``checkpoints/best``) or a ``.safetensors`` / ``.json`` checkpoint.
        out: the ``.onnx`` file to write; default ``RUN/export/model.onnx``. The card is written
            beside it with the suffix ``.json``.
        root: data root for the verification images (MedMNIST specs); default the run's
            ``data.root`` when it exists here, else ``$MEDLENS_DATA``, else ``~/.medlens/data``
            (:meth:`RunFolder.data_root <medlens.engine.run_folder.RunFolder.data_root>`).
        n_verify: how many test images (the first ones) to compare on, >= 1. Default 256.
        atol: largest allowed absolute difference between torch and ONNX Runtime probabilities.

    Returns:
        The path of the ``.onnx`` file.

    Raises:
        FileNotFoundError: no checkpoint, or the dataset's files are not on this machine.
        ValueError: ``out`` not ending in ``.onnx``, bad ``n_verify``, or the verification failed
            (the message gives the largest difference); nothing is written then.
    """
    from medlens.engine.checkpoint import load_model
    from medlens.inference import InferenceModel

    if isinstance(n_verify, bool) or not isinstance(n_verify, int) or n_verify < 1:
        raise ValueError(f"n_verify must be an integer >= 1, got {n_verify!r}")
    folder = RunFolder.of(run)
    weights = folder.weights
    onnx_file, card_file = (folder.onnx, folder.onnx_card) if out is None else (Path(out), sidecar(out))
    if onnx_file.suffix != ".onnx":
        raise ValueError(f"the export must be a .onnx file, got {onnx_file}")
    weights_sha256 = file_sha256(weights)  # before loading: the hash names exactly the weights exported
    model, card = load_model(weights)
    graph = InferenceModel.from_card(model, card).eval()
    images = _test_images(card, folder, root=root, limit=n_verify)
    with torch.inference_mode():
        expected = graph(torch.from_numpy(images)).numpy()
    with atomic_path(onnx_file) as tmp:
        _export(graph, torch.from_numpy(images[:2]), tmp)
        session = _onnx_session(tmp)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        # One image alone as well: the batch axis must really be dynamic, down to 1.
        single = session.run([OUTPUT_NAME], {INPUT_NAME: images[:1]})[0]
        difference = float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))
        if not difference <= atol:  # also catches NaN
            raise ValueError(f"ONNX Runtime and torch disagree on {len(images)} test images of "
                             f"{card.dataset.get('spec')}: max |difference| {difference:.3g} > {atol:g}; not exported")
    document = asdict(card)
    axes = ", ".join(["batch", str(card.in_channels)] + [str(card.input_size)] * card.spatial_dims)
    document["onnx"] = {"opset": OPSET, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                        "input": f"uint8 ({axes}) raw pixels", "output": "float32 (batch, classes) probabilities"}
    document["weights_sha256"] = weights_sha256
    document["onnx_sha256"] = file_sha256(onnx_file)  # Predictor.load refuses a model.onnx that differs
    document["verification"] = {"images": len(images), "spec": card.dataset.get("spec"),
                                "max_abs_difference": difference, "atol": atol}
    with atomic_path(card_file) as tmp:
        tmp.write_text(json.dumps(document, indent=1))
    return onnx_file
