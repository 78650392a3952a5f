"""pipeline.train.distributed: batch splitting, precision/device choices, and a real 2-process gloo DDP run
(torchrun) that ends with the same weights as one process trained on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.train.distributed import Distributed, autocast, grad_scaler, resolve_device

ROOT = Path(__file__).resolve().parents[1]

# A tiny loop written the way a training stage adopts the API: same seeded global batch on every rank, each rank
# its slice, mean loss scaled by its share, rank 0 saves.
WORKER = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    from pipeline.train.distributed import session, unwrap
    out, steps, global_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with session(os.environ, device="cpu") as dist:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        ddp = dist.wrap(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(global_batch, 8, generator=gen)          # (B, C): the same on every rank
            y = x.sum(dim=1, keepdim=True).sin()                      # (B, 1)
            start, stop = dist.span(global_batch)
            loss = ((ddp(x[start:stop]) - y[start:stop]) ** 2).mean() * dist.share(stop - start, global_batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dist.is_main:
            torch.save(unwrap(ddp).state_dict(), out)
        dist.barrier()
""")


def test_span_partitions_the_global_batch() -> None:
    for n in (1, 5, 7, 8):
        for world in (1, 2, 3):
            spans = [Distributed(rank=r, world_size=world).span(n) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert sum(Distributed(rank=r, world_size=world).share(s[1] - s[0], n)
                       for r, s in enumerate(spans)) == pytest.approx(world)


def test_plain_run_starts_no_group_and_wraps_nothing() -> None:
    dist = Distributed.from_env({}, device="cpu")
    model = torch.nn.Linear(2, 2)
    assert dist.world_size == 1 and dist.is_main and dist.wrap(model) is model
    assert not torch.distributed.is_initialized()


def test_bad_choices_name_the_key() -> None:
    with pytest.raises(ValueError, match="common.device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="common.precision"):
        autocast("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="common.precision"):
        autocast("fp16", torch.device("cpu"))


def test_bf16_autocast_runs_on_cpu_and_fp32_is_untouched() -> None:
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(3, 4)
    with autocast("bf16", torch.device("cpu")):
        assert lin(x).dtype == torch.bfloat16
    with autocast("fp32", torch.device("cpu")):
        assert lin(x).dtype == torch.float32
    assert not grad_scaler("bf16", torch.device("cpu")).is_enabled()


def _run(tmp_path: Path, nproc: int, steps: int = 20, global_batch: int = 6) -> dict[str, torch.Tensor]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / f"w{nproc}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29500 + nproc + os.getpid() % 1000), str(script), str(out), str(steps),
           str(global_batch)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert one.keys() == two.keys()
    # Tolerance: the two runs differ only in float summation order (two half-batch gradients averaged by gloo vs
    # one full-batch gradient), ~1e-7 relative per step; 20 Adam steps amplify that to well under 1e-5.
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-5, atol=1e-6), k
    # And the check can fail: a different global batch gives different weights.
    other = _run(tmp_path, 1, global_batch=5)
    assert not all(torch.allclose(one[k], other[k], rtol=1e-5, atol=1e-6) for k in one)


# The stages' path: prepare (global-batch BatchNorm), keyed span of the global batch, backward + step (explicit
# gradient average). SGD, not Adam, so float noise is not amplified and every tensor (biases and BatchNorm running
# statistics included) must match the one-process run.
WORKER_STAGE_PATH = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    from pipeline.train.distributed import session
    out, steps, global_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with session(os.environ, device="cpu") as dist:
        dist.check_batch(global_batch, "test.batch_size")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 1),
                              nn.BatchNorm1d(1))
        if sys.argv[4] == "global_bn":
            model, = dist.prepare(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(global_batch, 3, 6, 6, generator=gen)    # (B, C, H, W): the same on every rank
            y = x.mean(dim=(1, 2, 3)).unsqueeze(1).sin()               # (B, 1)
            start, stop = dist.span(global_batch)
            loss = ((model(x[start:stop]) - y[start:stop]) ** 2).mean()
            opt.zero_grad()
            dist.backward(loss, opt)
            dist.step(opt)
        if dist.is_main:
            torch.save(model.state_dict(), out)
        dist.barrier()
""")


def test_stage_path_with_batchnorm_matches_one_process_exactly(tmp_path: Path) -> None:
    script = tmp_path / "worker_stage.py"
    script.write_text(WORKER_STAGE_PATH)

    def run(nproc: int, global_batch: int = 8, bn: str = "global_bn") -> dict[str, torch.Tensor]:
        out = tmp_path / f"s{nproc}_{global_batch}_{bn}.pt"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29700 + nproc + os.getpid() % 1000), str(script), str(out), "15", str(global_batch), bn]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(out, weights_only=True)

    one, two = run(1), run(2)
    for k in one:
        if one[k].is_floating_point():
            assert torch.allclose(one[k], two[k], rtol=1e-5, atol=1e-6), k
    # per-rank BatchNorm statistics (plain BatchNorm on each half) do not match: the conversion is what does it
    per_rank = run(2, bn="per_rank")
    assert not torch.allclose(one["1.running_var"], per_rank["1.running_var"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one["0.weight"], per_rank["0.weight"], rtol=1e-5, atol=1e-6)
    other = run(1, global_batch=6)
    assert not torch.allclose(one["0.weight"], other["0.weight"], rtol=1e-5, atol=1e-6)


def test_convert_batchnorm_keeps_parameters_and_keys_and_is_plain_outside_a_group() -> None:
    from pipeline.train.distributed import convert_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 1), torch.nn.BatchNorm3d(4))
    weight, keys = model[1].weight, list(model.state_dict())
    x = torch.randn(3, 2, 2, 3, 3)
    before = model(x)
    convert_batchnorm(model)
    assert type(model[1]).__name__ == "CrossRankBatchNorm3d" and model[1].weight is weight
    assert list(model.state_dict()) == keys
    assert isinstance(model[1], torch.nn.BatchNorm3d)
    assert torch.allclose(model(x), before)  # no process group: the BatchNorm's own forward
