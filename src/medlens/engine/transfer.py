"""Transfer learning in a run: the starting weights, the input normalisation they need, and freezing.

Three ways to start a run other than from random weights, chosen in ``model``:

- ``pretrained``: published weights (``imagenet``, ``hf:REPO[:FILE]``, ``file:PATH``), mapped
  onto the registry model by :func:`medlens.models.pretrained.load_pretrained`; the input is then
  normalised with ImageNet's statistics (the weights' own), not the training split's.
- ``init_from``: the best checkpoint of another medlens run (or any model checkpoint of one),
  e.g. PneumoniaMNIST weights for BreastMNIST; the head is re-initialised when the classes differ,
  and the run normalises as the source run did (its features were learned on that scale).
- ``pretrain autoencoder`` (:mod:`medlens.engine.pretrain`), after either of the two above.

And the fine-tuning schedule of ``optim`` (``--recipe finetune``): :func:`apply_freeze` keeps
everything but the classifier frozen (no gradient, BatchNorm statistics fixed) for the first
``freeze_epochs`` epochs, and :func:`parameter_groups` gives the backbone ``backbone_lr_scale``
times the classifier's learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from medlens.data.augment import Normalisation, channel_stats
from medlens.engine.config import ModelConfig, OptimConfig
from medlens.engine.run_folder import RunFolder, weights_file


def _unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under a ``torch.compile`` wrapper."""
    return getattr(model, "_orig_mod", model)


def source_checkpoint(init_from: str) -> Path:
    """The model checkpoint ``--init-from`` names: a run folder's best, or a ``.safetensors`` / ``.json`` file.

    Raises:
        FileNotFoundError: neither a run folder with a best checkpoint nor a checkpoint file.
    """
    path = Path(init_from).expanduser()
    if path.is_dir():
        best = RunFolder(path).best
        if not best.is_file():
            raise FileNotFoundError(f"--init-from {init_from}: the folder has no {best.relative_to(path)}; "
                                    "name a finished medlens run or one of its checkpoint files")
        return best
    if not weights_file(path).is_file():
        raise FileNotFoundError(f"--init-from {init_from} is neither a medlens run folder nor a checkpoint file")
    return weights_file(path)


def input_normalisation(model_config: ModelConfig, train_images, *, own_checkpoint: Path | None = None
                        ) -> Normalisation:
    """The normalisation a run trains with and records in its card.

    ImageNet's for published weights, the source run's for ``init_from``, else the training
    split's per-channel statistics. A resumed run passes its own last checkpoint, whose card it
    keeps (the ``init_from`` source may be gone by then).
    """
    from medlens.engine.checkpoint import load_card

    if own_checkpoint is not None and own_checkpoint.is_file():
        return Normalisation.from_dict(dict(load_card(own_checkpoint).normalisation))
    channels = int(train_images.shape[1])
    if model_config.pretrained != "none":
        from medlens.models.pretrained import imagenet_normalisation

        mean, std = imagenet_normalisation(channels)
        return Normalisation(mean, std)
    if model_config.init_from is not None:
        card = load_card(source_checkpoint(model_config.init_from))
        if len(card.normalisation["mean"]) == channels:
            return Normalisation.from_dict(dict(card.normalisation))
    return channel_stats(train_images)


def init_from_run(model: nn.Module, architecture: str, init_from: str, *, in_channels: int, spatial_dims: int,
                  class_names: list[str]) -> str:
    """Load another run's weights into ``model`` (in place); returns a line saying what was loaded.

    Every tensor of the source except its classifier must fit the model by name and shape; the
    classifier is loaded too when the class names are the same, else it keeps its fresh weights.

    Raises:
        FileNotFoundError: see :func:`source_checkpoint`.
        ValueError: another architecture, channel count or number of spatial dimensions (one line
            naming both), or tensors that do not fit (other model options).
    """
    from medlens.engine.checkpoint import classifier_bias_name, load_card, load_state

    path = source_checkpoint(init_from)
    card = load_card(path)
    where = f"--init-from {init_from}"
    if card.architecture != architecture:
        raise ValueError(f"{where} is a {card.architecture} model; this run trains {architecture}: "
                         f"use --model {card.architecture}")
    if card.spatial_dims != spatial_dims:
        raise ValueError(f"{where} was trained on {card.spatial_dims}D data; this data is {spatial_dims}D")
    if card.in_channels != in_channels:
        raise ValueError(f"{where} takes {card.in_channels}-channel images; this data has {in_channels} "
                         f"(force it with --channels {card.in_channels} for folders)")
    state = load_state(path)
    model = _unwrap(model)
    own = model.state_dict()
    bias = classifier_bias_name(model, architecture)
    head_prefix = bias.rsplit(".", 1)[0] + "."
    same_classes = list(card.class_names) == list(class_names)
    keep = {k: v for k, v in state.items() if same_classes or not k.startswith(head_prefix)}
    missing = sorted(k for k in own if k not in keep and (same_classes or not k.startswith(head_prefix)))
    extra = sorted(set(keep) - set(own))
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in keep.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        listed = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "", f"extra {', '.join(extra[:3])}" if extra else "",
            f"shapes {'; '.join(wrong[:3])}" if wrong else "") if part)
        raise ValueError(f"{where} does not fit this {architecture} (other model options? the source was built "
                         f"with {card.model_kwargs}): {listed}")
    model.load_state_dict({**own, **keep}, strict=True)
    head = "kept (same classes)" if same_classes else \
        f"re-initialised ({len(card.class_names)} classes there, {len(class_names)} here)"
    return f"initialised from {path} ({len(keep)} tensors); classifier {head}"


def initialise(model: nn.Module, model_config: ModelConfig, *, in_channels: int, spatial_dims: int,
               class_names: list[str], say: Callable[[str], None]) -> None:
    """The run's starting weights: ``pretrained`` or ``init_from`` (nothing to do for neither)."""
    if model_config.pretrained != "none":
        from medlens.models.pretrained import load_pretrained

        info = load_pretrained(_unwrap(model), model_config.name, model_config.pretrained)
        say(f"pretrained: {info['tensors']} tensors from {model_config.pretrained} (first convolution: "
            f"{info['channels']}; classifier {info['head']}); input normalised with ImageNet's statistics")
    elif model_config.init_from is not None:
        say(init_from_run(model, model_config.name, model_config.init_from, in_channels=in_channels,
                          spatial_dims=spatial_dims, class_names=class_names))


def _classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(_unwrap(model).get_classifier().parameters())


def parameter_groups(model: nn.Module, loss: nn.Module, optim: OptimConfig) -> list:
    """The optimizer's parameters: one list, or with ``backbone_lr_scale`` != 1 two groups.

    The classifier (and the loss's own parameters) come first at ``optim.lr``, so the history's
    ``lr`` column stays the configured rate; the backbone follows at ``lr * backbone_lr_scale``.
    """
    params = [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]
    if optim.backbone_lr_scale == 1.0:
        return params
    head_ids = {id(p) for p in _classifier_parameters(model)} | {id(p) for p in loss.parameters()}
    head = [p for p in params if id(p) in head_ids]
    backbone = [p for p in params if id(p) not in head_ids]
    return [{"params": head, "lr": optim.lr}, {"params": backbone, "lr": optim.lr * optim.backbone_lr_scale}]


def apply_freeze(model: nn.Module, optim: OptimConfig, epoch: int) -> bool:
    """Set ``model`` up for training epoch ``epoch`` (called after Lightning's ``model.train()``).

    Epochs below ``optim.freeze_epochs``: everything but the classifier gets no gradient and its
    BatchNorm layers run in eval mode (the loaded statistics, not the batch's). Later epochs:
    every parameter trains, and BatchNorm layers stay in eval mode only with ``batchnorm: frozen``.

    Returns:
        Whether the backbone is frozen in this epoch.
    """
    frozen = epoch < optim.freeze_epochs
    head_ids = {id(p) for p in _classifier_parameters(model)}
    for param in model.parameters():
        if id(param) not in head_ids:
            param.requires_grad_(not frozen)
    if frozen or optim.batchnorm == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return frozen


def uses_freezing(optim: OptimConfig) -> bool:
    """Whether :func:`apply_freeze` has anything to do for this config."""
    return optim.freeze_epochs > 0 or optim.batchnorm == "frozen"

