"""DistributedDataParallel with the vdeblur ops: two gloo processes on CPU under torchrun.

The tests start ``python -m torch.distributed.run --nproc_per_node=2`` on this very file; run as
a script, it is the worker (``worker()`` below), which writes what it found to a JSON file per
rank for the test to check.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BATCH = 4  # the whole batch; each of the two processes takes half


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "python")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return proc

# -- the worker (runs in each torchrun process) ------------------------------------------------


def family_cases():
    """(family, model, clip frames, size): tiny presets covering every op family."""
    return [("haar+dynamic_filter", "dstnet", 3, 16), ("conv_gru", "tsvrnn", 5, 16),
            ("temporal_attention", "tfn", 3, 16), ("memory_readout", "memdeblur", 3, 16)]


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters()])


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    # BatchNorm in training mode normalises by the statistics of the batch each process sees
    # (half of it): DDP's gradients then differ from one process's on the whole batch by design.
    # Freeze it (running statistics), as fine-tuning from a pretrained encoder does.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def gradient_case(name: str, frames: int, size: int, rank: int) -> dict:
    import vdeblur_models
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(1234)  # the same weights and batch on both ranks
    single = prepare(vdeblur_models.build(name, "tiny").train())
    replica = prepare(vdeblur_models.build(name, "tiny").train())
    replica.load_state_dict(single.state_dict())
    x = torch.rand(BATCH, frames, 3, size, size)
    y = torch.rand_like(x)

    def loss_of(model, xb, yb):
        out = model(xb)
        target = yb
        inner = getattr(model, "module", model)
        if hasattr(inner, "output_frames"):
            kept = inner.output_frames(frames)
            target = yb[:, kept.start:kept.stop]
        return torch.nn.functional.mse_loss(out, target)  # mean: halves average to the whole

    loss_of(single, x, y).backward()
    ddp = DDP(replica, find_unused_parameters=True)
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    loss_of(ddp, x[half], y[half]).backward()
    g_single, g_ddp = flat_grads(single), flat_grads(replica)
    return {"rel_err": ((g_ddp - g_single).norm() / g_single.norm()).item(),
            "grad_norm": g_single.norm().item(), "numel": g_single.numel()}


class HaarNet(torch.nn.Module):
    """One small graph on a vdeblur op: conv -> Haar DWT -> conv on LL -> Haar IDWT."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.mid = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import vdeblur_ops

        ll, highs = vdeblur_ops.haar_dwt2d(self.head(x), levels=1, norm="average",
                                           highs_layout="band")
        return vdeblur_ops.haar_idwt2d(self.mid(ll), highs, norm="average", highs_layout="band")


def compile_case(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(99)
    eager, compiled_net = HaarNet(), HaarNet()
    compiled_net.load_state_dict(eager.state_dict())
    x = torch.rand(2, 3, 16, 16) + rank  # different data per rank
    ddp_eager, ddp_compiled = DDP(eager), torch.compile(DDP(compiled_net))
    out_e, out_c = ddp_eager(x), ddp_compiled(x)
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    return {"out_err": (out_c - out_e).abs().max().item(),
            "grad_err": (flat_grads(compiled_net) - flat_grads(eager)).abs().max().item(),
            "grad_norm": flat_grads(eager).norm().item()}


def worker(out_dir: Path) -> None:
    import torch.distributed as dist

    import vdeblur_ops  # noqa: F401  registers the ops

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cases = sys.argv[2].split(",")
    results = {}
    for family, name, frames, size in family_cases():
        if name in cases:
            results[family] = gradient_case(name, frames, size, rank)
    if "compile" in cases:
        results["compile"] = compile_case(rank)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()

# -- the tests --------------------------------------------------------------------------------


def run_worker(tmp_path: Path, cases: str) -> list[dict]:
    torchrun(str(Path(__file__).resolve()), str(tmp_path), cases)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process_whole_batch(tmp_path: Path):
    """Average of the two processes' half-batch gradients == one process's whole-batch gradient,
    for a tiny model of every op family (float32 rounding only)."""
    names = ",".join(name for _, name, _, _ in family_cases())
    for rank, results in enumerate(run_worker(tmp_path, names)):
        assert set(results) == {family for family, *_ in family_cases()}
        for family, r in results.items():
            assert r["grad_norm"] > 0, f"{family}: no gradient"
            assert r["rel_err"] < 1e-5, f"rank {rank} {family}: relative error {r['rel_err']:.2e}"


@pytest.mark.slow
def test_torch_compile_under_ddp(tmp_path: Path):
    for results in run_worker(tmp_path, "compile"):
        r = results["compile"]
        assert r["grad_norm"] > 0
        assert r["out_err"] < 1e-5 and r["grad_err"] < 1e-5 * max(1.0, r["grad_norm"]), r


@pytest.mark.slow
def test_train_command_under_torchrun(tmp_path: Path):
    from vdeblur_models import data

    data.make_synthetic(tmp_path / "data", train_clips=2, test_clips=1, frames=4, size=32,
                        seed=int(torch.randint(1000, ()).item()))
    proc = torchrun("-m", "vdeblur_models.train", "--model", "dstnet", "--preset", "tiny",
                    "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                    "--steps", "3", "--batch-size", "1", "--frames", "3", "--crop", "32",
                    "--workers", "0", "--val-every", "0", "--log-every", "1")
    assert "2 process(es)" in proc.stderr
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["val"]["psnr"] > 0


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
