"""Train a vdeblur_models network on GoPro / DVD-layout clips.

    python -m vdeblur_models.train --model dstnet --preset tiny --data DIR --out RUN_DIR \\
        [--steps 1000] [--batch-size 4] [--frames 5] [--crop 64] [--lr 2e-4] [--warmup 50] [--resume]
    torchrun --nproc_per_node=2 -m vdeblur_models.train --model dstnet ...   # the same, DDP

One process per GPU under ``torchrun`` (DistributedDataParallel; NCCL on CUDA, gloo on CPU);
``--batch-size`` is per process. Mixed precision (``--amp``) on CUDA. Each model trains with
the loss and optimiser of its paper (LOSSES below). Every ``--val-every`` steps rank 0 deblurs
the held-out clips (``test/``) whole with the deblur command's chunking and reports PSNR / SSIM
against the sharp frames, next to the blurry input's. ``RUN_DIR/last.pth`` is the checkpoint:
``python -m vdeblur_models.deblur --weights RUN_DIR/last.pth`` loads it, and ``--resume``
continues from it (model, optimiser, schedule, step).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import vdeblur_models
from vdeblur_models import data, metrics
from vdeblur_models.deblur import deblur_sequence

CHECKPOINT_FORMAT = "vdeblur_models.train/1"
CHARBONNIER_EPS = 1e-3


# -- losses (each model's paper) ------------------------------------------------------------

def charbonnier(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((pred - target) ** 2 + CHARBONNIER_EPS ** 2).mean()


def fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance of the 2-D spectra (real and imaginary parts), MIMO-UNet's frequency loss."""
    p, t = torch.fft.rfft2(pred.float()), torch.fft.rfft2(target.float())
    return (torch.view_as_real(p) - torch.view_as_real(t)).abs().mean()


def kept_frames(model: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """The sharp frames (N, T', 3, H, W) matching the outputs of a model that drops some."""
    if hasattr(model, "output_frames"):
        kept = model.output_frames(target.shape[1])
        return target[:, kept.start:kept.stop]
    return target


def loss_l2(model: nn.Module, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(blur).float(), kept_frames(_unwrap(model), sharp))


def loss_dstnet(model: nn.Module, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    # DSTNet paper Sec. 4 "Parameter settings": "the same loss function as [8]" = MIMO-UNet
    # (Cho et al. 2021, Eq. 7-9): L1 content loss + 0.1 x L1 of the FFT.
    out = model(blur).float()
    return F.l1_loss(out, sharp) + 0.1 * fft_l1(out, sharp)


def loss_memdeblur(model: nn.Module, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    # MemDeblur paper Sec. 4.1 "Implementation details": Nah et al.'s multi-scale content loss
    # with Charbonnier in place of MSE: every forward pass's output (coarse to fine) against
    # the sharp frames resized to its scale, averaged over scales.
    outs = model(blur, return_all_scales=True)
    n, t, _, h, w = sharp.shape
    flat = sharp.flatten(0, 1)
    total = sharp.new_zeros(())
    for out in outs:
        hs, ws = out.shape[-2:]
        scale = max(1, round(max(h, w) / max(hs, ws)))  # outputs are padded: size / scale >= h
        target = flat if scale == 1 else F.interpolate(flat, scale_factor=1 / scale,
                                                        mode="bilinear", antialias=True)
        target = target.unflatten(0, (n, t))
        th, tw = min(hs, target.shape[-2]), min(ws, target.shape[-1])
        total = total + charbonnier(out[..., :th, :tw].float(), target[..., :th, :tw])
    return total / len(outs)


@dataclass
class Recipe:
    """A paper's training set-up: loss, optimiser class, initial learning rate."""

    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: type[torch.optim.Optimizer]
    lr: float
    source: str


RECIPES = {
    # ESTRNN Sec. 4 "Training setting": L2 on GOPRO (Eq. 7), ADAM, lr 1e-4.
    "estrnn": Recipe(loss_l2, torch.optim.Adam, 1e-4, "ESTRNN Eq. 7 (L2), Adam 1e-4"),
    # TFN Sec. 4.2: L2 loss (Eq. 10), ADAM, lr 1e-4.
    "tfn": Recipe(loss_l2, torch.optim.Adam, 1e-4, "TFN Eq. 10 (L2), Adam 1e-4"),
    # TSV-RNN Sec. 4: MSE over the five frames (Eq. 2), Adam, lr 1e-5.
    "tsvrnn": Recipe(loss_l2, torch.optim.Adam, 1e-5, "TSV-RNN Eq. 2 (MSE), Adam 1e-5"),
    # MemDeblur Sec. 4.1: multi-scale Charbonnier, ADAM (0.9, 0.999, 1e-8), lr 5e-4.
    "memdeblur": Recipe(loss_memdeblur, torch.optim.Adam, 5e-4,
                        "MemDeblur Sec. 4.1 (multi-scale Charbonnier), Adam 5e-4"),
    # DSTNet Sec. 4: MIMO-UNet loss, AdamW, lr 2e-4 with cosine annealing.
    "dstnet": Recipe(loss_dstnet, torch.optim.AdamW, 2e-4, "DSTNet Sec. 4 (L1 + 0.1 FFT), AdamW 2e-4"),
}


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


# -- distributed set-up -----------------------------------------------------------------------

@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str | None) -> Dist:
    """Join the torchrun process group when WORLD_SIZE is set (NCCL on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", local if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


# -- validation ------------------------------------------------------------------------------

@torch.no_grad()
def validate(model: nn.Module, clips: Sequence[data.Clip], device: torch.device, chunk: int,
             max_frames: int | None = None) -> dict[str, float]:
    """Deblur each held-out clip whole; mean PSNR / SSIM over frames of the output and of the
    blurry input, both against the sharp frames."""
    model.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "input_psnr": [], "input_ssim": []}
    try:
        for clip in clips:
            count = min(len(clip), max_frames or len(clip))
            blur = [data.read_frame(p) for p in clip.blur[:count]]
            sharp = [data.read_frame(p) for p in clip.sharp[:count]]

            def sink(i: int, out: torch.Tensor) -> None:
                out = out.float().clamp(0, 1)
                scores["psnr"].append(metrics.psnr(out, sharp[i]).item())
                scores["ssim"].append(metrics.ssim(out, sharp[i]).item())
                scores["input_psnr"].append(metrics.psnr(blur[i], sharp[i]).item())
                scores["input_ssim"].append(metrics.ssim(blur[i], sharp[i]).item())

            deblur_sequence(model, blur, chunk, 2, device, sink)
    finally:
        model.train()
    return {k: (metrics.mean_finite(v) if k.endswith("psnr") else sum(v) / max(len(v), 1))
            for k, v in scores.items()}


# -- checkpoints -----------------------------------------------------------------------------

def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, scaler, step: int,
                    args: argparse.Namespace, val: dict[str, float] | None) -> None:
    """Write atomically (temp file + rename) so an interrupted save leaves the old one."""
    state = {"format": CHECKPOINT_FORMAT, "model": _unwrap(model).state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "step": step,
             "config": {"model": args.model, "preset": args.preset, "steps": args.steps},
             "val": val or {}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, scaler,
                    args: argparse.Namespace) -> int:
    """Restore everything from ``path``; returns the step it was saved at."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"--resume: {path} is not a checkpoint written by vdeblur_models.train")
    cfg = state["config"]
    if (cfg["model"], cfg["preset"]) != (args.model, args.preset):
        raise SystemExit(f"--resume: {path} is for {cfg['model']} ({cfg['preset']}), not "
                         f"{args.model} ({args.preset})")
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"])


# -- the command -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    models = vdeblur_models.list_models()
    p = argparse.ArgumentParser(prog="python -m vdeblur_models.train",
                                description="Train a video-deblurring network (DDP under torchrun).")
    p.add_argument("--model", required=True, choices=sorted(models))
    p.add_argument("--preset", default="paper")
    p.add_argument("--data", required=True, type=Path, help="GoPro / DVD layout root")
    p.add_argument("--out", required=True, type=Path, help="run folder (last.pth is written here)")
    p.add_argument("--steps", type=int, default=1000, help="total optimiser steps")
    p.add_argument("--batch-size", type=int, default=4, help="clips per step per process")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per training clip (default: the model's fixed length, else 5)")
    p.add_argument("--crop", type=int, default=256, help="training crop size (pixels)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: paper's)")
    p.add_argument("--warmup", type=int, default=0,
                   help="steps of linear learning-rate warm-up before the cosine decay")
    p.add_argument("--val-every", type=int, default=500, help="validate every N steps (0: at end only)")
    p.add_argument("--val-clips", type=int, default=1,
                   help="clips held out when --data has no test/ folder")
    p.add_argument("--val-frames", type=int, default=None, help="frames per held-out clip used")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pth if it exists")
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=2, help="data loader processes per rank")
    p.add_argument("--cache", action="store_true", help="keep decoded frames in memory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "crop", "log_every", "save_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.frames is not None and args.frames < 1:
        p.error("--frames must be at least 1")
    if args.val_every < 0 or args.workers < 0 or args.warmup < 0:
        p.error("--val-every, --workers and --warmup must be >= 0")
    if args.lr is not None and not args.lr >= 0:
        p.error(f"--lr {args.lr}: must be >= 0")
    if args.warmup >= args.steps:
        p.error(f"--warmup {args.warmup} must be shorter than --steps {args.steps}")
    if args.preset not in models[args.model]:
        p.error(f"--preset {args.preset!r}: {args.model} has {', '.join(models[args.model])}")
    return args


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps: linear warm-up to 1 over the
    first ``warmup`` steps, then cosine annealing to 0 at ``steps`` (and 0 after). Closed form,
    so a resumed run may ask for more steps. The warm-up is for short runs at high learning
    rates: Adam's first steps, taken on barely estimated moments, are then small ones."""
    if step < warmup:
        return (step + 1) / warmup
    done = (min(step, steps) - warmup) / (steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * done))


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or choice == "off":
        return None
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    d = setup_distributed(args.device)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if d.main else (lambda msg: None)
    try:
        train_clips, val_clips = data.load_splits(args.data, args.val_clips)
    except ValueError as err:
        raise SystemExit(str(err)) from None

    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = vdeblur_models.build(args.model, preset=args.preset).to(d.device)
    recipe = RECIPES[args.model]
    frames = args.frames or getattr(model, "fixed_frames", None) or 5
    lr = recipe.lr if args.lr is None else args.lr  # --lr 0 is a valid (untrained) control
    optimizer = recipe.optimizer(model.parameters(), lr=lr)
    def schedule(s: int) -> float:
        return lr_factor(s, args.steps, args.warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    dtype = amp_dtype(args.amp, d.device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "last.pth"
    step = 0
    if args.resume and ckpt.is_file():
        step = load_checkpoint(ckpt, model, optimizer, scheduler, scaler, args)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(step)  # this run's schedule, not the saved lr
        log(f"resumed from {ckpt} at step {step}")

    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)

    # Different crops on every rank and after every resume: seed by rank and step.
    torch.manual_seed(args.seed + 1000003 * d.rank + step)
    dataset = data.ClipCrops(train_clips, frames, args.crop,
                             length=(args.steps - step) * args.batch_size, cache=args.cache)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        pin_memory=d.device.type == "cuda", drop_last=True, persistent_workers=False)
    log(f"{args.model} ({args.preset}): {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(train_clips)} training / {len(val_clips)} held-out clips, {d.world} process(es) on "
        f"{d.device}, batch {args.batch_size}x{d.world} of {frames}x{args.crop}x{args.crop}, "
        f"amp {dtype}, lr {lr:g} ({args.warmup} warm-up steps, cosine decay); "
        f"paper recipe: {recipe.source}")

    val: dict[str, float] | None = None
    chunk = max(frames, 8)

    def run_validation() -> None:
        nonlocal val
        if d.main and val_clips:
            val = validate(model, val_clips, d.device, chunk, args.val_frames)
            log(f"step {step}: validation PSNR {val['psnr']:.2f} dB (input {val['input_psnr']:.2f}), "
                f"SSIM {val['ssim']:.4f} (input {val['input_ssim']:.4f})")
        if d.world > 1:
            dist.barrier()

    model.train()
    t0, first = time.perf_counter(), step
    loss_sum, loss_count = 0.0, 0
    for blur, sharp in loader:
        blur, sharp = blur.to(d.device, non_blocking=True), sharp.to(d.device, non_blocking=True)
        autocast = (torch.autocast("cuda", dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss = recipe.loss(net, blur, sharp)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step + 1}: loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        if step % args.log_every == 0 or step == args.steps:
            rate = (time.perf_counter() - t0) / (step - first)
            log(f"step {step}/{args.steps} loss {loss_sum / loss_count:.5f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {rate:.2f} s/step, "
                f"{rate * (args.steps - step) / 60:.1f} min left")
            loss_sum, loss_count = 0.0, 0
        if args.val_every and step % args.val_every == 0 and step != args.steps:
            run_validation()
        if d.main and (step % args.save_every == 0 or step == args.steps):
            save_checkpoint(ckpt, model, optimizer, scheduler, scaler, step, args, val)
    run_validation()
    if d.main:
        save_checkpoint(ckpt, model, optimizer, scheduler, scaler, step, args, val)
        log(f"saved {ckpt} (step {step})")
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
