"""Checkpoints as safetensors + a JSON sidecar: no pickle anywhere, and self-describing.

Two kinds of checkpoint live in a run folder's ``checkpoints/``:

* **Model checkpoints** (``best``, ``last``): ``NAME.safetensors`` holds the classifier's
  ``state_dict`` under its usual keys; ``NAME.json`` is the :class:`ModelCard` (architecture and
  kwargs, task, class names, input size and channels, normalisation, config, metrics).
  :func:`load_model` rebuilds the model from these two files alone.
* **The training state** (``resume``): Lightning's whole checkpoint dict (weights, optimizer,
  scheduler, loop counters, callback states) written through :class:`SafetensorsCheckpointIO`,
  so ``--resume`` needs no pickle either.

Nested Python state is stored by :func:`save_state`: tensors go into the safetensors file under
their path in the structure; everything else goes into the JSON with a small type tag where JSON
alone would lose the type (tuples, ``Counter``, dicts with int keys, numpy arrays). torch's own
format would be simpler, but it is a pickle that can run code when loaded.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "state.safetensors"
    >>> save_state({"w": torch.ones(2), "step": 3, "betas": (0.9, 0.99)}, path)
    >>> state = load_state(path)
    >>> state["w"].tolist(), state["step"], state["betas"]
    ([1.0, 1.0], 3, (0.9, 0.99))
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens._io import atomic_path, file_sha256
from medlens.engine.run_folder import CARD_SUFFIX, RunFolder, sidecar, weights_file

TAG = "__medlens_type__"
CARD_VERSION = 1


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-ready form of ``value``; tensors are moved into ``tensors`` under their path."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        if where in tensors:
            raise ValueError(f"two tensors would share the key {where!r} in the checkpoint")
        tensors[where] = value.detach().to("cpu").contiguous().clone()
        return {TAG: "tensor", "key": where}
    if isinstance(value, np.ndarray):
        # Stored as raw bytes, so any numpy dtype (uint32 RNG states, for one) round-trips.
        raw = np.ascontiguousarray(value).reshape(value.shape)  # ascontiguousarray makes 0-d arrays 1-d
        if where in tensors:
            raise ValueError(f"two arrays would share the key {where!r} in the checkpoint")
        tensors[where] = torch.from_numpy(raw.reshape(-1).view(np.uint8).copy())
        return {TAG: "ndarray", "key": where, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(value, np.generic):
        return _encode(value.item(), where, tensors)
    if isinstance(value, (torch.dtype, torch.device)):
        return {TAG: type(value).__name__, "value": str(value)}
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        kind = "Counter" if isinstance(value, Counter) else "dict"
        if kind == "dict" and all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: _encode(v, f"{where}/{k}", tensors) for k, v in value.items()}
        return {TAG: kind, "items": [[_encode(k, f"{where}/key{i}", tensors), _encode(v, f"{where}/{k}", tensors)]
                                     for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"cannot store a {type(value).__name__} at {where!r} in a checkpoint "
                    "(only tensors, numpy arrays, numbers, strings, lists, tuples and dicts)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: _decode(v, tensors) for k, v in value.items()}
    if kind == "tensor":
        return tensors[value["key"]]
    if kind == "ndarray":
        raw = tensors[value["key"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in value["items"])
    if kind in ("dict", "Counter"):
        items = [(_decode(k, tensors), _decode(v, tensors)) for k, v in value["items"]]
        return Counter(dict(items)) if kind == "Counter" else dict(items)
    if kind == "dtype":
        return getattr(torch, value["value"].removeprefix("torch."))
    if kind == "device":
        return torch.device(value["value"])
    raise ValueError(f"unknown type tag {kind!r} in a checkpoint")


def save_state(state: dict, path: str | os.PathLike, *, extra_json: dict | None = None) -> None:
    """Write nested ``state`` as ``path`` (safetensors) + its JSON sidecar, both atomically.

    The two files carry the same random token; :func:`load_state` refuses a pair whose tokens
    differ (a crash between the two renames), instead of mixing two checkpoints. The sidecar also
    records the SHA-256 of the ``.safetensors`` file; a file that no longer matches it (swapped,
    edited, damaged) is refused at load.

    The tensors are serialised in memory and written by Python, so a full disk is an ``OSError``
    (ENOSPC) that the CLI reports in one line, like every other write.

    Args:
        state: nested dicts / lists / tuples of tensors, numpy arrays and plain values.
        path: the ``.safetensors`` path; the sidecar is ``path`` with ``.json``.
        extra_json: more top-level JSON fields (a model card), stored beside the state.
    """
    import hashlib

    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    token = uuid.uuid4().hex
    document = dict(extra_json or {})
    document["state"] = _encode(state, "", tensors)
    document["token"] = token
    data = save(tensors, metadata={"token": token})
    document["sha256"] = hashlib.sha256(data).hexdigest()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    del data
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(json.dumps(document, indent=1, allow_nan=True))


def read_sidecar(path: str | os.PathLike) -> dict:
    """The JSON sidecar of a checkpoint, checked to belong to the ``.safetensors`` beside it."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix == CARD_SUFFIX:
        path = weights_file(path)
    side = sidecar(path)
    for needed in (path, side):
        if not needed.is_file():
            raise FileNotFoundError(f"checkpoint file {needed} does not exist")
    try:
        document = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{side} is not valid JSON ({err.msg} at line {err.lineno}): "
                         "the checkpoint is damaged") from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            token = (handle.metadata() or {}).get("token")
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    if document.get("token") != token:
        raise ValueError(f"{path} and {side.name} come from different saves (an interrupted write?); "
                         "use another checkpoint of the run")
    expected = document.get("sha256")  # absent in checkpoints written before it was recorded
    if expected is not None and file_sha256(path) != expected:
        raise ValueError(f"{path} is not the file that was saved (its SHA-256 differs from the one in {side.name}): "
                         "it was changed or damaged; use another checkpoint of the run")
    return document


def load_state(path: str | os.PathLike) -> dict:
    """Read back what :func:`save_state` wrote."""
    return _state_of(read_sidecar(path), path)


def _state_of(document: dict, path: str | os.PathLike) -> dict:
    """The state of a checkpoint whose sidecar ``document`` was read already: its tensors from ``path``."""
    from safetensors.torch import load_file

    return _decode(document["state"], load_file(str(weights_file(path))))


def _lightning_checkpoint_io():
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    class SafetensorsCheckpointIO(CheckpointIO):
        """Lightning checkpoint plugin that writes safetensors + JSON instead of a pickle."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            save_state(checkpoint, weights_file(path))

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return load_state(weights_file(path))

        def remove_checkpoint(self, path):
            for file in (weights_file(path), sidecar(weights_file(path))):
                file.unlink(missing_ok=True)

    return SafetensorsCheckpointIO


def safetensors_checkpoint_io():
    """An instance of the Lightning ``CheckpointIO`` plugin (Lightning is imported on call)."""
    return _lightning_checkpoint_io()()


@dataclass
class ModelCard:
    """Everything needed to rebuild and use a model, stored as the checkpoint's JSON sidecar.

    Attributes:
        architecture: registered model name.
        model_kwargs: keyword arguments it was built with (after defaults were resolved).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``ordinal``.
        class_names: one per output.
        in_channels: image channels.
        spatial_dims: 2 or 3.
        input_size: edge of the (square / cubic) input in pixels.
        normalisation: ``{"mean": [...], "std": [...]}`` on the [0, 1] scale, per channel.
        dataset: the data spec and fingerprint it was trained on.
        config: the resolved run config.
        metrics: what is known about it (epoch, val and test metrics).
        versions: medlens, torch.
    """

    architecture: str
    model_kwargs: dict
    task: str
    class_names: list[str]
    in_channels: int
    spatial_dims: int
    input_size: int
    normalisation: dict
    dataset: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    card_version: int = CARD_VERSION

    @classmethod
    def from_dict(cls, raw: dict) -> ModelCard:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        missing = [k for k in ("architecture", "model_kwargs", "task", "class_names", "in_channels",
                               "spatial_dims", "input_size", "normalisation") if k not in known]
        if missing:
            raise ValueError(f"model card lacks {', '.join(missing)}: not a medlens model checkpoint")
        return cls(**known)

    def build(self) -> torch.nn.Module:
        """A fresh (untrained) model of this architecture."""
        from medlens.models import create_model

        return create_model(self.architecture, in_channels=self.in_channels, num_classes=len(self.class_names),
                            spatial_dims=self.spatial_dims, input_size=self.input_size, **self.model_kwargs)


def classifier_bias_name(model: torch.nn.Module, architecture: str) -> str:
    """The state-dict name of the bias of ``model``'s logits (``"fc.bias"``), from ``model.get_classifier()``.

    Args:
        model: a model of the registry's contract.
        architecture: its registry name, for the message.

    Returns:
        The dotted parameter name, a key of ``model.state_dict()``.

    Raises:
        ValueError: the model has no classifier with a bias (``data.correct_priors`` has nothing
            to shift), or no single classifier (``ensemble``: its own message).
    """
    get_classifier = getattr(model, "get_classifier", None)
    bias = getattr(get_classifier(), "bias", None) if get_classifier is not None else None
    if bias is None:
        raise ValueError(f"data.correct_priors shifts the classifier bias (get_classifier().bias), which model "
                         f"{architecture!r} lacks")
    name = next((name for name, param in model.named_parameters() if param is bias), None)
    assert name is not None, f"{architecture}: get_classifier() returned a layer that is not part of the model"
    return name


def save_model(model: torch.nn.Module, card: ModelCard, path: str | os.PathLike, *,
               logit_shift: torch.Tensor | None = None) -> None:
    """Write ``model``'s weights (``path``, safetensors) and ``card`` (the JSON sidecar).

    ``logit_shift`` (one value per output) is added to the saved classifier bias (see
    :func:`classifier_bias_name`), not to ``model``'s own (``data.correct_priors``: training goes
    on with the unshifted model).

    Raises:
        ValueError: ``logit_shift`` is given and the model has no classifier bias.
    """
    state = {k: v for k, v in model.state_dict().items()}
    if logit_shift is not None:
        bias = classifier_bias_name(model, card.architecture)
        state[bias] = state[bias] + logit_shift.to(state[bias])
    save_state(state, path, extra_json={"card": asdict(card)})


def load_card(path: str | os.PathLike) -> ModelCard:
    """The :class:`ModelCard` of a model checkpoint (``.safetensors`` or its ``.json``)."""
    return _card_of(read_sidecar(path), path)


def _card_of(document: dict, path: str | os.PathLike) -> ModelCard:
    """The card in a checkpoint's sidecar ``document`` (read from ``path``)."""
    if "card" not in document:
        raise ValueError(f"{path} holds a training state, not a model: use checkpoints/best or last")
    return ModelCard.from_dict(document["card"])


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild a model from a checkpoint alone, in eval mode.

    Args:
        path: ``run/checkpoints/best.safetensors`` (or its ``.json``), or a run folder (its best).

    Returns:
        ``(model, card)``.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a damaged checkpoint or one that is not a model.
    """
    path = Path(path)
    path = RunFolder(path).best if path.is_dir() else weights_file(path)
    document = read_sidecar(path)  # once: the card and the state are both in it
    card = _card_of(document, path)
    try:
        model = card.build()
    except (TypeError, KeyError) as exc:  # ValueError passes as it is (the registry's own message)
        raise ValueError(f"{path}: its card does not build model {card.architecture!r} ({exc})") from None
    try:
        state = _state_of(document, path)
    except Exception as exc:  # safetensors raises its own types for a damaged body
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing / unexpected keys, shape mismatches: the first line says which
        raise ValueError(f"{path} does not fit model {card.architecture!r} as its card describes it: "
                         f"{str(exc).splitlines()[1 if len(str(exc).splitlines()) > 1 else 0].strip()[:200]}") from None
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise ValueError(f"{path} holds NaN or infinite weights in {len(broken)} tensor(s) (first: {broken[0]}): "
                         "the run diverged; retrain with a lower learning rate or use another checkpoint")
    model.eval()
    return model, card
