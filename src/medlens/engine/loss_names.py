"""The names of the registered losses, readable without torch.

:mod:`medlens.engine.losses` registers the losses themselves; its classes subclass
``torch.nn.Module``, so reading its registry imports torch, which ``medlens --help`` must not.
The CLI's ``--loss`` choices and :class:`~medlens.engine.config.OptimConfig` read this list
instead; ``tests/engine/test_losses.py`` checks that it names the registry's losses, in its order.
"""

LOSS_NAMES = ("ce", "bce", "focal", "aucm")
