"""How much memory a training run will need, estimated before its first step.

A run that needs more memory than the machine has does not fail cleanly: it swaps, the machine
stops answering and the process ignores SIGTERM (38 small NIfTI volumes upsampled to 64³ and fed
to ResNet-18 in batches of 128 reached 20 of 23 GB before epoch 0 ended). So the estimate is made
before training, and a run above a share of the memory is refused with the estimate and what to
change.

The estimate has three parts:

- **parameters**: weights, their gradients and the optimizer's state per weight (Adam and AdamW
  keep two moments, SGD and PESG one momentum buffer), 4 bytes each;
- **activations**: a probe runs the model once on one zero image (evaluation mode, no gradient)
  and adds up the outputs of every leaf module but the in-place ones (a ``ReLU(inplace=True)``
  writes into its input's storage); autograd keeps about that much per image for the backward
  pass, which frees it as it goes and holds only a few gradient tensors at once. Times the
  batch, plus the batch's float copies (the batch, its augmented and its normalised copy);
- **data**: the decoded images of every split, held in memory for the whole run.

On a GPU, parameters and activations live in the GPU's memory and the data in the host's; on a
CPU all three share the host's memory.

Checked against the growth of the peak resident memory over two Adam training steps on this CPU:
parameters + activations were 0.70 GB estimated vs 0.94 GB grown (ResNet-18, 2D 28 px, batch
128) and 1.83 vs 2.03 GB (ResNet-18, 3D 28³, batch 16): the estimate is a slight under-count
(allocator caches and per-layer workspaces are not in it), which the share below allows for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Refuse above this share of the memory: the estimate counts only what the run itself allocates;
# the operating system, the Python process's libraries (torch alone maps ~1 GB), other programs,
# the allocator's fragmentation and the temporaries of individual layers need the rest, and a run
# that overshoots does not fail but swaps the machine to a halt. 60% leaves 40% for all of that.
DEFAULT_SHARE = 0.6
GB = 1e9
# Optimizer state tensors per weight.
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "pesg": 1}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, by part (see the module docstring)."""

    parameters: int
    activations: int
    data: int
    device: str  # "cpu" or "cuda"

    @property
    def on_device(self) -> int:
        """Bytes in the memory of the device that trains (all of it on a CPU)."""
        return self.parameters + self.activations + (self.data if self.device == "cpu" else 0)

    def describe(self) -> str:
        return (f"parameters {self.parameters / GB:.2f} GB + activations {self.activations / GB:.2f} GB per batch "
                f"+ data {self.data / GB:.2f} GB")


def activation_bytes_per_image(model: torch.nn.Module, in_channels: int, size: int, spatial_dims: int) -> int:
    """Bytes of every leaf module's output for one image (the probe of the module docstring)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if getattr(module, "inplace", False):
            return
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * 4  # float32 in training whatever the probe's dtype

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *([size] * spatial_dims)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def estimate_memory(model: torch.nn.Module, source, *, batch_size: int, optimizer: str,
                    device: str = "cpu") -> MemoryEstimate:
    """The :class:`MemoryEstimate` of training ``model`` on ``source`` in batches of ``batch_size``."""
    images = source.splits["train"].images
    in_channels, spatial_dims = int(images.shape[1]), images.ndim - 2
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parameters = weights * 4 * (2 + OPTIMIZER_STATES.get(optimizer, 2))
    per_image = activation_bytes_per_image(model, in_channels, source.size, spatial_dims)
    input_bytes = in_channels * source.size ** spatial_dims * 4
    activations = batch_size * (per_image + 3 * input_bytes)
    data = sum(int(split.images.nbytes) for split in source.splits.values())
    return MemoryEstimate(parameters=parameters, activations=activations, data=data, device=device)


def machine_memory(device: str = "cpu") -> int:
    """Bytes of memory of the device that trains: the GPU's, else the host's physical memory."""
    if device == "cuda":
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_memory(estimate: MemoryEstimate, *, total: int, share: float = DEFAULT_SHARE, batch_size: int,
                 size: int, spatial_dims: int) -> None:
    """Refuse a run whose estimate is above ``share`` of ``total`` bytes.

    Raises:
        ValueError: one line with the estimate, the limit and what to change.
    """
    if share <= 0 or estimate.on_device <= share * total:
        return
    where = "the GPU's" if estimate.device == "cuda" else "this machine's"
    smaller = [f"--batch-size {max(1, batch_size // 4)}"]
    if spatial_dims == 3 and size > 28:
        smaller.append("--size 28")
    elif spatial_dims == 2 and size > 64:
        smaller.append("--size 64")
    smaller.append("a smaller --model (e.g. resnet_compact)")
    raise ValueError(
        f"this run needs about {estimate.on_device / GB:.1f} GB ({estimate.describe()}), more than "
        f"{share:.0%} of {where} {total / GB:.1f} GB: try {', '.join(smaller)}; or set train.memory_share "
        f"(now {share}) in a --config file, 0 to skip this check")
