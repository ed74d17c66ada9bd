"""Deblur a sequence of frames with any registered model.

    python -m vdeblur_models.deblur --model dstnet --weights W.pth --input FRAMES_DIR \\
        --output OUT_DIR [--preset paper] [--device cuda] [--chunk 30] [--overlap 2]
    python -m vdeblur_models.deblur ... --input blurry.mp4 --output sharp.mp4 [--gt GT_DIR]

Video files (mp4, mkv, mov, avi, webm; PyAV) may replace either folder; a video output keeps
the input video's frame rate (``--fps`` for frame folders). With ``--gt`` (frames or video) it
prints the mean PSNR / SSIM of the saved 8-bit frames against the ground truth.

Reads the PNG / JPEG frames of ``--input`` in name order (numbers inside names compare as
numbers, so ``frame9`` comes before ``frame10``), runs the model over the sequence in
overlapping temporal chunks, and writes one deblurred frame per input frame, under the same
file name, to ``--output``. ``--weights`` takes the authors' released checkpoint (mapped by
:func:`vdeblur_models.load_official`) or a state_dict saved from our model.

Chunking: each chunk of at most ``--chunk`` input frames keeps the outputs of its middle frames
only; ``--overlap`` frames of context on each side are computed and dropped (except at the ends of
the sequence), so every frame sees context from both directions. Models that return fewer frames
than they get (they need past / future frames) are fed the sequence with its first and last
frames repeated, so every frame still gets an output. A model that takes clips of one length
only (TSV-RNN: 5 frames) is found by probing (or declares ``fixed_frames``) and gets exactly
that length. If a chunk does not fit in the device's memory, the chunk length is halved and the
chunk retried.
"""
from __future__ import annotations

import argparse
import pickle
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import vdeblur_models
from vdeblur_models import metrics, video_io

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CHUNK = {"cuda": 30, "cpu": 8}  # the authors test DSTNet on 30-frame clips
PROBE_SIZE = 32  # frame size of the small probe clips that find a model's clip geometry


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: frame2 < frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: Path) -> list[Path]:
    """The PNG / JPEG files of ``folder`` in name order."""
    if not folder.is_dir():
        raise SystemExit(f"--input {folder} is not a directory of frames")
    frames = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not frames:
        raise SystemExit(f"--input {folder} holds no PNG or JPEG frames")
    return sorted(frames, key=lambda p: natural_key(p.name))


def read_frame(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class LazyFrames:
    """The frames of ``paths`` as a sequence of (3, H, W) tensors, read when first asked for and
    kept only while recent (a chunk's worth), so long videos do not have to fit in memory."""

    def __init__(self, paths: Sequence[Path], keep: int) -> None:
        self.paths, self.keep = list(paths), max(1, keep)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))  # oldest first (insertion order)
            self._cache[i] = read_frame(self.paths[i])
        return self._cache[i]


def frame_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def write_frame(frame: torch.Tensor, path: Path) -> None:
    """frame (3, H, W) in [0, 1] (clamped) -> an 8-bit image; format from the suffix."""
    from PIL import Image

    arr = frame.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(arr)  # (H, W, 3) uint8: RGB
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95, subsampling=0)  # no chroma subsampling
    else:
        image.save(path)


@dataclass
class Window:
    """One chunk: model input frames [start, stop) of the (edge-padded) sequence; the outputs
    for padded frames [keep_start, keep_stop) are kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_window(first: int, num_frames: int, chunk: int, overlap: int,
                margin: tuple[int, int]) -> Window:
    """The window whose kept outputs begin at original frame ``first``.

    Indices are in the padded sequence (``margin[0]`` repeated first frames in front): original
    frame i is padded frame i + margin[0]. A model with margin (a, b) turns an input window
    [s, e) into outputs for [s + a, e - b)."""
    a, b = margin
    produced = chunk - a - b                      # outputs per full window
    overlap = max(0, min(overlap, (produced - 1) // 2))
    lo, hi = a, a + num_frames                    # padded indices of the original frames
    keep_start = a + first
    # Outputs computed: from overlap frames before keep_start (context), a full window where
    # possible; all but the last overlap frames are kept (all of them at the sequence's end).
    out_start = max(lo, min(keep_start - overlap, hi - produced))
    out_stop = min(hi, out_start + produced)
    keep_stop = hi if out_stop == hi else out_stop - overlap  # > keep_start
    return Window(out_start - a, out_stop + b, keep_start, keep_stop)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _probe(model: torch.nn.Module, device: torch.device, frames: int) -> int | None:
    """Output frame count of ``model`` on a small random clip of ``frames`` frames, or None when
    the model refuses that clip length (ValueError)."""
    try:
        with torch.no_grad():
            return model(torch.rand(1, frames, 3, PROBE_SIZE, PROBE_SIZE, device=device)).shape[1]
    except ValueError:
        return None


@dataclass
class ClipGeometry:
    """What a model does with a clip: ``length`` input frames per call (``fixed``: the only
    length it accepts), returning outputs for all but ``margin`` = (leading, trailing) frames."""

    length: int
    fixed: bool
    margin: tuple[int, int]


def clip_geometry(model: torch.nn.Module, device: torch.device, chunk: int) -> ClipGeometry:
    """Find the clip length to use (``chunk`` if the model accepts it, else the nearest length it
    accepts, larger first; a model may declare ``fixed_frames``) and the frames it drops: from
    its ``output_frames(T)`` (the range of input frames it returns) when it has one, else from the
    probe's output count (which cannot tell the sides apart: the frames lost are assumed split
    evenly, the later side taking any odd one)."""
    declared = getattr(model, "fixed_frames", None)
    candidates = ([int(declared)] if declared else
                  [chunk, *range(chunk + 1, chunk + 33), *range(chunk - 1, 0, -1)])
    for length in candidates:
        out = _probe(model, device, length)
        if out is not None:
            break
    else:
        raise SystemExit(f"the model accepted none of the clip lengths {candidates[0]}.."
                         f"{max(candidates)} (ValueError on each)")
    if hasattr(model, "output_frames"):
        kept = model.output_frames(length)
        margin = (kept.start, length - kept.stop)
    else:
        if out > length:
            raise RuntimeError(f"model returned {out} frames for {length} inputs")
        lost = length - out
        margin = (lost // 2, lost - lost // 2)
    return ClipGeometry(length, bool(declared) or length != chunk, margin)


class Progress:
    """A one-line progress report on stderr: frames done, rate, time left."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.stream = stream if stream is not None else sys.stderr

    def update(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.t0
        per = elapsed / max(self.done, 1)
        left = per * (self.total - self.done)
        end = "\n" if self.done >= self.total else ""
        self.stream.write(f"\rdeblurred {self.done}/{self.total} frames "
                          f"({100 * self.done // self.total}%), {per:.2f} s/frame, "
                          f"{left:.0f} s left{end}")
        self.stream.flush()


def deblur_sequence(model: torch.nn.Module, frames: Sequence[torch.Tensor], chunk: int,
                    overlap: int, device: torch.device,
                    sink: Callable[[int, torch.Tensor], None],
                    progress: Progress | None = None) -> int:
    """Run ``model`` over ``frames`` (each (3, H, W)) chunk by chunk; ``sink(i, out_i)`` receives
    every deblurred frame in order. Returns the chunk length that fitted in memory."""
    n = len(frames)
    geometry = clip_geometry(model, device, chunk)
    margin = geometry.margin
    a, b = margin
    min_chunk = geometry.length if geometry.fixed else a + b + 1
    chunk = max(geometry.length, min_chunk)
    if chunk != geometry.length or geometry.fixed:
        print(f"the model takes clips of {chunk} frames", file=sys.stderr)
    first = 0
    while first < n:
        win = plan_window(first, n, chunk, overlap, margin)
        stop = win.start + chunk if geometry.fixed else win.stop  # fixed length: pad the end
        # padded frame p is frame p - a, the first / last frame repeated beyond the ends
        clip = torch.stack([frames[min(max(p - a, 0), n - 1)]
                            for p in range(win.start, stop)]).unsqueeze(0)
        try:
            with torch.no_grad():
                out = model(clip.to(device))[0]
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not is_out_of_memory(err) or chunk <= min_chunk:
                raise
            del err
            if device.type == "cuda":
                torch.cuda.empty_cache()
            chunk = max(min_chunk, chunk // 2)
            print(f"\nout of memory: retrying with chunks of {chunk} frames", file=sys.stderr)
            continue
        # out[j] is the output for padded frame win.start + a + j
        for p in range(win.keep_start, win.keep_stop):
            sink(p - a, out[p - win.start - a].cpu())
        kept = win.keep_stop - win.keep_start
        if progress is not None:
            progress.update(kept)
        first += kept
    return chunk


def load_weights(model: torch.nn.Module, path: Path, trust: bool = False) -> None:
    """Our own state_dict (exact key match), a ``vdeblur_models.train`` checkpoint (its
    ``"model"`` entry) or the authors' checkpoint (via load_official).
    Checkpoints are read with ``weights_only=True`` (tensors and plain containers only) unless
    ``trust``: unpickling arbitrary objects can run code from the file."""
    if not path.is_file():
        raise SystemExit(f"--weights {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        raise SystemExit(f"--weights {path} holds more than tensors and plain containers "
                         f"({str(err).splitlines()[0]}); if you trust the file, pass "
                         "--trust-checkpoint to unpickle it fully") from None
    if isinstance(checkpoint, dict) and str(checkpoint.get("format", "")).startswith(
            "vdeblur_models.train/"):
        checkpoint = checkpoint["model"]  # a training checkpoint (vdeblur_models.train)
    if isinstance(checkpoint, dict) and set(checkpoint) == set(model.state_dict()):
        model.load_state_dict(checkpoint)
    else:
        vdeblur_models.load_official(model, checkpoint)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    models = vdeblur_models.list_models()
    parser = argparse.ArgumentParser(
        prog="python -m vdeblur_models.deblur",
        description="Deblur a directory of video frames with a vdeblur_models network.")
    parser.add_argument("--model", required=True, choices=sorted(models), help="network name")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint: the authors' release or our state_dict (.pth)")
    parser.add_argument("--input", required=True, type=Path,
                        help="directory of PNG/JPEG frames, or a video file (mp4, mkv, mov, avi, webm)")
    parser.add_argument("--output", required=True, type=Path,
                        help="directory for the result frames, or a video file (same suffixes)")
    parser.add_argument("--gt", type=Path, default=None,
                        help="ground-truth sharp frames (directory or video): report PSNR / SSIM")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of a video --output (default: the input video's, else 30)")
    parser.add_argument("--crf", type=int, default=18, help="video --output quality (lower: better)")
    parser.add_argument("--preset", default="paper",
                        help="model preset; " + "; ".join(f"{m}: {', '.join(p)}"
                                                          for m, p in models.items()))
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="frames per model call (default 30 on CUDA, 8 on CPU; halved "
                             "automatically when it does not fit in memory)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle --weights fully (only for files you trust)")
    parser.add_argument("--overlap", type=int, default=2,
                        help="context frames computed and dropped on each side of a chunk")
    args = parser.parse_args(argv)
    if args.chunk is not None and args.chunk < 1:
        parser.error("--chunk must be at least 1")
    if args.overlap < 0:
        parser.error("--overlap must be >= 0")
    if args.fps is not None and args.fps <= 0:
        parser.error("--fps must be positive")
    return args


def open_frames(path: Path, keep: int, what: str):
    """(frames, per-frame output names or None, fps or None) of a frame folder or a video."""
    if video_io.is_video(path) and not path.is_dir():
        try:
            video = video_io.VideoFrames(path, keep=keep)
        except ValueError as err:
            raise SystemExit(f"{what}: {err}") from None
        return video, None, video.fps
    paths = list_frames(path) if what == "--input" else _gt_frames(path)
    return LazyFrames(paths, keep=keep), [p.name for p in paths], None


def _gt_frames(path: Path) -> list[Path]:
    try:
        return list_frames(path)
    except SystemExit:
        raise SystemExit(f"--gt {path} is not a directory of PNG/JPEG frames nor a video") from None


def frames_size(frames) -> tuple[int, int]:
    """(width, height) of every frame of ``frames`` (must all agree)."""
    if isinstance(frames, video_io.VideoFrames):
        return frames.size
    sizes = {frame_size(p) for p in frames.paths}
    if len(sizes) != 1:
        raise SystemExit(f"all frames must have one size (width, height); found {sorted(sizes)}")
    return sizes.pop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chunk = args.chunk or DEFAULT_CHUNK.get(device.type, 8)
    frames, names, in_fps = open_frames(args.input, 2 * chunk, "--input")
    width, height = frames_size(frames)
    gt = None
    if args.gt is not None:
        gt, _, _ = open_frames(args.gt, 2 * chunk, "--gt")
        if len(gt) != len(frames) or frames_size(gt) != (width, height):
            raise SystemExit(f"--gt has {len(gt)} frames of {frames_size(gt)}; --input has "
                             f"{len(frames)} of {(width, height)}")

    try:
        model = vdeblur_models.build(args.model, preset=args.preset)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.weights is None:
        print(f"WARNING: no --weights given: {args.model!r} (preset {args.preset!r}) has random, "
              "untrained weights and produces no useful output; pass a checkpoint with --weights",
              file=sys.stderr)
    else:
        try:
            load_weights(model, args.weights, args.trust_checkpoint)
        except ValueError as err:  # a checkpoint for another architecture / preset
            raise SystemExit(f"--weights {args.weights}: {err}") from None
    model = model.to(device).eval()

    writer = None
    if video_io.is_video(args.output):
        args.output.parent.mkdir(parents=True, exist_ok=True)
        writer = video_io.VideoWriter(args.output, args.fps or in_fps or 30, width, height, args.crf)
    else:
        args.output.mkdir(parents=True, exist_ok=True)
    print(f"{args.model} ({args.preset}) on {device}: {len(frames)} frames of "
          f"{width}x{height}, chunks of {chunk}, overlap {args.overlap}", file=sys.stderr)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}

    def sink(i: int, frame: torch.Tensor) -> None:
        if gt is not None:
            out = frame.float().clamp(0, 1).mul(255).round().div(255)  # score what is saved
            scores["psnr"].append(metrics.psnr(out, gt[i]).item())
            scores["ssim"].append(metrics.ssim(out, gt[i]).item())
        if writer is not None:
            writer.write(frame)
        else:
            write_frame(frame, args.output / (names[i] if names else f"{i:06d}.png"))

    try:
        deblur_sequence(model, frames, chunk, args.overlap, device, sink, Progress(len(frames)))
    finally:
        if writer is not None:
            writer.close()
    print(f"wrote {len(frames)} frames to {args.output}", file=sys.stderr)
    if gt is not None:
        print(f"PSNR {metrics.mean_finite(scores['psnr']):.3f} dB, "
              f"SSIM {sum(scores['ssim']) / len(scores['ssim']):.4f} over {len(frames)} frames "
              f"against {args.gt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
