"""Networks, one per file, each with a config dataclass. Each trained family's loader sits beside its class
(``load_tavc``, ``load_syncnet``, ``load_syncers``, ``load_renderer``), all through
:func:`pipeline.checkpoint.load_model`."""

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of `module`."""
    return sum(p.numel() for p in module.parameters())
