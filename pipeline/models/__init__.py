"""Networks, one per file, each with a config dataclass. Each trained family's loader sits beside its class
(``load_tavc``, ``load_syncnet``, ``load_syncers``, ``load_renderer``), all through
:func:`pipeline.checkpoint.load_model`."""

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """Where `module`'s parameters live (the CPU for a parameter-free module, e.g. a test oracle)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of `module`."""
    return sum(p.numel() for p in module.parameters())
