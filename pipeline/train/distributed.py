"""Data-parallel training under ``torchrun``: the machinery every training loop shares (issue 15 item 1).

Every training stage adopts it the same way and stays bit-identical when run as one plain process::

    dist = Distributed.from_env(os.environ, device="auto", precision="fp32")   # the stage layer does this
    model, = dist.prepare(model)                 # to the device; BatchNorm synchronised across ranks when N > 1
    optimizer = ...                              # after prepare (prepare keeps the parameter objects anyway)
    dist.check_batch(cfg.batch_size, "train_x.batch_size")
    loader = step_loader(..., span=dist.span(cfg.batch_size))   # this rank's slots of each keyed global batch
    for batch in loader:
        with dist.autocast():                    # common.precision: fp32 (no-op) | bf16 | fp16
            loss = ...                           # a mean over this rank's samples
        optimizer.zero_grad(set_to_none=True)
        dist.backward(loss, optimizer)           # GradScaler for fp16, plain backward otherwise
        dist.step(optimizer)                     # average gradients over ranks, then step
        if dist.is_main: save_checkpoint(...)    # rank 0 alone writes

Batch splitting: samples are keyed by ``(step, slot)`` (:mod:`pipeline.data.sampling`), so rank r simply loads the
slots of its contiguous span of every global batch: the global batch, and the sequence of samples, do not depend on
N. The batch size must be a multiple of N, so every rank's mean weighs its samples like the global mean does and
the average of the ranks' gradients is exactly the gradient of the global-batch mean (up to float summation order).

Gradient averaging is an explicit all-reduce of the gradients an optimizer is about to apply (:meth:`step`: one
flattened buffer, ``all_reduce`` then ``/ N``), which is what ``DistributedDataParallel`` computes, without its
bucketed overlap of communication with the backward pass. It is used instead of wrapping models in DDP because the
GAN loops call several networks several times per step (discriminator on real and fake, generator steps through the
discriminator), with two optimizers and submodules that only some steps use: DDP needs either one forward per
backward or ``find_unused_parameters``, and both break on those loops. :meth:`wrap` (real DDP) stays for
single-network loops of users' own, and the tests check that the two give the same weights.

BatchNorm: a rank sees only its slice of the batch, so plain BatchNorm would normalise with per-rank statistics
and the N-process run would differ from the one-process run. :func:`convert_batchnorm` makes every BatchNorm
compute its training statistics over the global batch with a differentiable all-reduce (works on gloo and NCCL;
torch's ``SyncBatchNorm`` refuses CPU tensors). A plain run converts nothing.

The library never reads environment variables (STYLE rule 1): :meth:`Distributed.from_env` takes the mapping it
reads as an argument, and stages pass ``os.environ``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from pipeline.config import DEVICES, PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``common.device`` → a torch device; ``cuda`` without a GPU fails naming the key."""
    if choice not in DEVICES:
        raise ValueError(f"common.device: {choice!r} is not one of {', '.join(DEVICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("common.device: 'cuda' asked for, but torch sees no CUDA device")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclasses.dataclass
class Distributed:
    """This process's place in a (possibly one-process) data-parallel run.

    Attributes:
        rank: global rank, 0 in a plain run.
        world_size: number of processes, 1 in a plain run.
        local_rank: rank on this machine (selects the GPU).
        device: where the model and batches live.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    _scalers: dict[int, torch.amp.GradScaler] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"common.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("common.precision: 'fp16' needs a CUDA device (use bf16 on CPU)")

    @classmethod
    def from_env(cls, env: Mapping[str, str], device: str = "auto", precision: str = "fp32") -> Distributed:
        """Join the process group torchrun describes in ``env`` (gloo on CPU, NCCL on CUDA); a plain run
        (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) starts no process group."""
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local)
        made = cls(rank=rank, world_size=world, local_rank=local, device=dev, precision=precision)  # validates
        if world > 1 and not torch.distributed.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                                 rank=rank, world_size=world)
        return made

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, reports and the MLflow run."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------------------------------------------------
    # What a training loop calls (module docstring)
    # ------------------------------------------------------------------------------------------------------------
    def check_batch(self, batch_size: int, key: str) -> None:
        """The global batch must split evenly over the ranks (module docstring); the error names the param."""
        if batch_size % self.world_size:
            raise ValueError(f"{key}: {batch_size} is not a multiple of the {self.world_size} training processes "
                             f"(the global batch is split evenly over the ranks)")

    def prepare(self, *modules: nn.Module) -> tuple[nn.Module, ...]:
        """Move the modules to :attr:`device` and, when there are several ranks, make their BatchNorms compute
        statistics over the global batch (:func:`convert_batchnorm`). Parameter objects are kept, so an optimizer
        built before still holds them (moving to another device makes new ones: build optimizers afterwards)."""
        out = []
        for m in modules:
            m = m.to(self.device)
            if self.active:
                convert_batchnorm(m)
            out.append(m)
        return tuple(out)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast context for :attr:`precision` (a no-op for fp32)."""
        return autocast(self.precision, self.device)

    def scaler(self, optimizer: torch.optim.Optimizer) -> torch.amp.GradScaler:
        """The GradScaler of one optimizer (enabled for fp16 only; each optimizer of a GAN loop has its own)."""
        key = id(optimizer)
        if key not in self._scalers:
            self._scalers[key] = grad_scaler(self.precision, self.device)
        return self._scalers[key]

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()``, through the optimizer's GradScaler for fp16."""
        self.scaler(optimizer).scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of the optimizer's parameters over the ranks, then step (skipped by the fp16
        GradScaler when they overflowed: an overflow on one rank reaches every rank through the average)."""
        self.reduce_gradients(p for group in optimizer.param_groups for p in group["params"])
        scaler = self.scaler(optimizer)
        scaler.step(optimizer)
        scaler.update()

    def reduce_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace every existing ``.grad`` by its mean over the ranks: one all-reduce of one flat buffer. Every rank
        runs the same code, so the same parameters have gradients everywhere."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean_values(self, values: Mapping[str, float]) -> dict[str, float]:
        """Means over the ranks of logged scalars (one all-reduce); the values themselves in a plain run."""
        if not self.active:
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (already on :attr:`device`) when there are several ranks, ``model`` otherwise."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous ``[start, stop)`` slice of a global batch of ``n`` items (the first ``n % world``
        ranks take one more; a rank may get none when ``n < world``)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def share(self, n_rank: int, n_global: int) -> float:
        """Factor turning this rank's *mean* loss into its share of the global mean, given DDP's gradient
        average over ranks: ``n_rank * world / n_global`` (1.0 in a plain run)."""
        return n_rank * self.world_size / n_global

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# BatchNorm over the global batch
# ----------------------------------------------------------------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """Differentiable all-reduce (sum): y = Σ_r x_r on every rank. Rank r's loss reaches every y, so the gradient of
    the summed loss with respect to x_r is Σ_r' ∂L_r'/∂y: the backward pass is the same all-reduce."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's signature
        y = x.clone()
        torch.distributed.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        g = grad.clone()
        torch.distributed.all_reduce(g)
        return g


class _CrossRankBatchNorm:
    """Mixin put in front of a BatchNorm class by :func:`convert_batchnorm`: in training mode, with a process group
    of several ranks, mean and variance are those of the global batch (two differentiable all-reduces: the sums,
    then the squared deviations from the global mean), and the running statistics are updated with them exactly as
    one process holding the whole batch would. Otherwise the BatchNorm's own forward runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        total = all_reduce(torch.cat([xf.sum(dims), local_count]))
        count = total[-1].detach()
        mean = total[:-1] / count  # (C,)
        var = all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / count  # (C,) biased, as normalisation uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (count / max(float(count) - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


_CROSS_RANK: dict[type, type] = {}


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Give every BatchNorm under ``module`` (itself included) global-batch statistics (:class:`_CrossRankBatchNorm`),
    in place: the class is swapped, parameters, buffers and state-dict keys stay, so checkpoints are unchanged."""
    for m in module.modules():
        cls = type(m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _CrossRankBatchNorm):
            if cls not in _CROSS_RANK:
                _CROSS_RANK[cls] = type(f"CrossRank{cls.__name__}", (_CrossRankBatchNorm, cls), {})
            m.__class__ = _CROSS_RANK[cls]
    return module


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP, so checkpoints hold the same keys at any N (no ``module.`` prefixes to strip)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``common.precision`` → an autocast context (a no-op for fp32, so fp32 runs are bit-identical to today)."""
    if precision not in PRECISIONS:
        raise ValueError(f"common.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("common.precision: 'fp16' needs a CUDA device (use bf16 on CPU)")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that scales only for fp16 (bf16 and fp32 have fp32's exponent range: disabled, a pass-through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@contextlib.contextmanager
def session(env: Mapping[str, str], device: str = "auto", precision: str = "fp32") -> Iterator[Distributed]:
    """:meth:`Distributed.from_env` for the duration of a stage; the process group is closed on the way out."""
    dist = Distributed.from_env(env, device, precision)
    try:
        yield dist
    finally:
        dist.close()
