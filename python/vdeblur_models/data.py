"""Video-deblurring training data: the GoPro / DVD folder layouts, random clip crops, and a
small synthetic data set made the way GoPro was made.

Layouts read (``ROOT`` is what ``--data`` names)::

    ROOT/train/CLIP/blur/*.png  ROOT/train/CLIP/sharp/*.png    GoPro (blur_gamma also accepted)
    ROOT/test/CLIP/input/*.jpg  ROOT/test/CLIP/GT/*.jpg         DVD (quantitative_datasets)

``train`` / ``test`` may also be called ``training`` / ``testing``; a ROOT without them is a flat
folder of clips. Frames are paired by their sorted position in the blur and sharp folders.

Synthetic data (``python -m vdeblur_models.data --make-synthetic DIR``): each clip is a random
multi-scale colour texture panning one pixel per sub-frame (direction from ``--motion``); a
sharp frame is one sub-frame and its blurry frame the mean of the ``sub_frames`` sub-frames
around it (the exposure), as GoPro averaged 7-13 consecutive 240 fps frames: a box blur
``sub_frames`` pixels long along the motion.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vdeblur_models.deblur import IMAGE_SUFFIXES, natural_key, read_frame, write_frame

BLUR_NAMES = ("blur", "blur_gamma", "input")
SHARP_NAMES = ("sharp", "GT", "gt")
SPLIT_NAMES = {"train": ("train", "training"), "test": ("test", "testing", "val")}


@dataclass
class Clip:
    """One video clip: paired blurry and sharp frame files in time order."""

    name: str
    blur: list[Path]
    sharp: list[Path]

    def __len__(self) -> int:
        return len(self.blur)


def _images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _pick(clip_dir: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (clip_dir / name).is_dir():
            return clip_dir / name
    return None


def find_clips(folder: Path) -> list[Clip]:
    """The clips (sub-folders holding a blur and a sharp frame folder) of ``folder``, by name."""
    if not folder.is_dir():
        raise ValueError(f"data folder {folder} does not exist")
    clips = []
    for clip_dir in sorted((p for p in folder.iterdir() if p.is_dir()),
                           key=lambda p: natural_key(p.name)):
        blur_dir, sharp_dir = _pick(clip_dir, BLUR_NAMES), _pick(clip_dir, SHARP_NAMES)
        if blur_dir is None or sharp_dir is None:
            continue
        blur, sharp = _images(blur_dir), _images(sharp_dir)
        if len(blur) != len(sharp):
            raise ValueError(f"clip {clip_dir}: {len(blur)} blurry frames but {len(sharp)} sharp")
        if blur:
            clips.append(Clip(clip_dir.name, blur, sharp))
    return clips


def split_dir(root: Path, split: str) -> Path | None:
    """ROOT/train (or training) for ``split="train"``, ROOT/test (testing, val) for "test"."""
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def load_splits(root: Path, val_clips: int = 1) -> tuple[list[Clip], list[Clip]]:
    """(training clips, validation clips). With train/ and test/ folders, test/ is held out;
    a flat folder holds out its last ``val_clips`` clips."""
    train_dir, test_dir = split_dir(root, "train"), split_dir(root, "test")
    if train_dir is not None:
        train = find_clips(train_dir)
        val = find_clips(test_dir) if test_dir is not None else []
    else:
        clips = find_clips(root)
        if len(clips) <= val_clips:
            raise ValueError(f"--data {root}: {len(clips)} clips, need more than {val_clips} "
                             "to hold some out for validation")
        train, val = clips[:len(clips) - val_clips], clips[len(clips) - val_clips:]
    if not train:
        raise ValueError(f"--data {root}: no clips with blur/ and sharp/ (or input/ and GT/) "
                         "frame folders")
    return train, val


class ClipCrops(torch.utils.data.Dataset):
    """Random training samples: ``frames`` consecutive frames of a clip, cropped at one random
    ``crop`` x ``crop`` window, randomly flipped (the papers' augmentation).

    Item i draws from clip ``i % len(clips)``; position, crop and flips come from the global
    torch RNG (seeded per process/worker by the caller). Returns (blur, sharp), each
    (frames, 3, crop, crop) float32 in [0, 1]. ``cache`` keeps decoded frames in memory."""

    def __init__(self, clips: list[Clip], frames: int, crop: int, length: int,
                 flips: bool = True, cache: bool = False) -> None:
        short = [c.name for c in clips if len(c) < frames]
        if short:
            raise ValueError(f"frames={frames}: clips {short} are shorter")
        self.clips, self.frames, self.crop, self.length = clips, frames, crop, length
        self.flips, self.cache = flips, cache
        self._frames: dict[Path, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def _read(self, path: Path) -> torch.Tensor:
        if not self.cache:
            return read_frame(path)
        if path not in self._frames:
            self._frames[path] = read_frame(path)
        return self._frames[path]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.clips[index % len(self.clips)]
        start = int(torch.randint(len(clip) - self.frames + 1, ()))
        idx = range(start, start + self.frames)
        blur = torch.stack([self._read(clip.blur[i]) for i in idx])
        sharp = torch.stack([self._read(clip.sharp[i]) for i in idx])
        h, w = blur.shape[-2:]
        if h < self.crop or w < self.crop:
            raise ValueError(f"crop={self.crop} is larger than clip {clip.name}'s {h}x{w} frames")
        top = int(torch.randint(h - self.crop + 1, ()))
        left = int(torch.randint(w - self.crop + 1, ()))
        blur = blur[..., top:top + self.crop, left:left + self.crop]
        sharp = sharp[..., top:top + self.crop, left:left + self.crop]
        if self.flips:
            for dim in (-1, -2):
                if torch.rand(()) < 0.5:
                    blur, sharp = blur.flip(dim), sharp.flip(dim)
        return blur.contiguous(), sharp.contiguous()


# -- synthetic data ------------------------------------------------------------------------

# Feature sizes of the texture in pixels (coarse to fine), fixed in pixels rather than relative
# to the canvas so that the blur length means the same thing at any clip length or frame size.
TEXTURE_CELLS = (32, 16, 8, 4)
# Motion directions of the synthetic clips: "horizontal" pans left or right (one blur kernel,
# a horizontal box, since a box is symmetric: learnable by a small model in a few hundred
# steps), "axis" also up or down, "any" also the diagonals (four kernels to tell apart).
MOTIONS = {"horizontal": ((0, 1), (0, -1)),
           "axis": ((0, 1), (0, -1), (1, 0), (-1, 0)),
           "any": tuple((y, x) for y in (-1, 0, 1) for x in (-1, 0, 1) if (y, x) != (0, 0))}


def random_texture(height: int, width: int, generator: torch.Generator,
                   cells: tuple[int, ...] = TEXTURE_CELLS) -> torch.Tensor:
    """(3, height, width) colour texture in [0, 1]: uniform noise on grids of ``cells``-pixel
    spacing, bicubically upsampled and summed (finer octaves weaker), so there are edges of
    every scale from a few pixels up for blur to destroy."""
    tex = torch.zeros(1, 3, height, width)
    for octave, cell in enumerate(cells):
        grid = (max(2, -(-height // cell)), max(2, -(-width // cell)))
        noise = torch.rand(1, 3, *grid, generator=generator)
        tex += F.interpolate(noise, size=(height, width), mode="bicubic",
                             align_corners=False) * 0.9 ** octave
    tex -= tex.amin(dim=(-2, -1), keepdim=True)
    return (tex / tex.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6))[0]


def synthetic_clip(frames: int, size: int, sub_frames: int, generator: torch.Generator,
                   motion: str = "horizontal") -> tuple[torch.Tensor, torch.Tensor]:
    """(blur, sharp), each (frames, 3, size, size): a texture panning one pixel per sub-frame in
    a direction drawn from ``MOTIONS[motion]`` (integer shifts: no resampling blur in the sharp
    frames; one pixel a step: the blur is a solid box of ``sub_frames`` pixels, not a comb of
    separate copies); sharp = the middle sub-frame of each exposure, blur = their mean."""
    if motion not in MOTIONS:
        raise ValueError(f"motion={motion!r}: expected one of {sorted(MOTIONS)}")
    choices = MOTIONS[motion]
    vy, vx = choices[int(torch.randint(len(choices), (), generator=generator))]
    travel = frames * sub_frames
    pad = 2 * travel + size
    tex = random_texture(pad, pad, generator)
    oy, ox = travel - (vy * travel) // 2, travel - (vx * travel) // 2  # keep inside the texture

    def view(s: int) -> torch.Tensor:
        y, x = oy + vy * s, ox + vx * s
        return tex[:, y:y + size, x:x + size]

    blur, sharp = [], []
    for f in range(frames):
        subs = torch.stack([view(f * sub_frames + s) for s in range(sub_frames)])
        blur.append(subs.mean(0))
        sharp.append(subs[sub_frames // 2])
    return torch.stack(blur), torch.stack(sharp)


def make_synthetic(root: Path, train_clips: int = 4, test_clips: int = 1, frames: int = 8,
                   size: int = 64, sub_frames: int = 7, seed: int = 0,
                   motion: str = "horizontal") -> Path:
    """Write a GoPro-layout synthetic data set (PNG) under ``root``; returns ``root``."""
    if frames < 1 or size < 8 or sub_frames < 1:
        raise ValueError(f"frames={frames}, size={size}, sub_frames={sub_frames}: need frames >= 1, "
                         "size >= 8, sub_frames >= 1")
    if motion not in MOTIONS:
        raise ValueError(f"motion={motion!r}: expected one of {sorted(MOTIONS)}")
    gen = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_clips), ("test", test_clips)):
        for c in range(count):
            blur, sharp = synthetic_clip(frames, size, sub_frames, gen, motion)
            for kind, seq in (("blur", blur), ("sharp", sharp)):
                folder = root / split / f"clip{c:03d}" / kind
                folder.mkdir(parents=True, exist_ok=True)
                for i, frame in enumerate(seq):
                    write_frame(frame, folder / f"{i:06d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vdeblur_models.data",
                                     description="Make a synthetic GoPro-layout data set.")
    parser.add_argument("--make-synthetic", type=Path, required=True, metavar="DIR")
    parser.add_argument("--train-clips", type=int, default=4)
    parser.add_argument("--test-clips", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="frame width and height")
    parser.add_argument("--sub-frames", type=int, default=7, help="sub-frames averaged per blur")
    parser.add_argument("--motion", choices=sorted(MOTIONS), default="horizontal",
                        help="directions the texture pans in (one pixel per sub-frame)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_synthetic(args.make_synthetic, args.train_clips, args.test_clips, args.frames,
                   args.size, args.sub_frames, args.seed, args.motion)
    print(f"wrote {args.train_clips} + {args.test_clips} clips to {args.make_synthetic}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
