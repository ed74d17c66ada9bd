"""Video files in and out of the deblur command, through PyAV (``pip install av``: FFmpeg in the
wheel; ``pip install vdeblur_ops[video]``).

Frames are (3, H, W) float32 RGB tensors in [0, 1], as everywhere in vdeblur_models.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import torch

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
# Encoder per container: H.264 where the container takes it, VP9 for WebM, MPEG-4 for AVI.
_CODECS = {".webm": "libvpx-vp9", ".avi": "mpeg4"}
DEFAULT_CODEC = "libx264"


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise RuntimeError("video files need PyAV: pip install av (or vdeblur_ops[video])") from None
    return av


def probe(path: Path) -> tuple[int, tuple[int, int], Fraction]:
    """(frame count, (width, height), frames per second) of the first video stream; the count
    is found by decoding when the container does not record it."""
    av = _av()
    if not path.is_file():
        raise ValueError(f"video {path}: no such file")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"video {path}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        size = (stream.codec_context.width, stream.codec_context.height)
        count = stream.frames or sum(1 for _ in container.decode(stream))
    return count, size, Fraction(rate)


def _to_tensor(frame) -> torch.Tensor:
    arr = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class VideoFrames:
    """The frames of a video file as a sequence of (3, H, W) tensors, decoded in order and kept
    only while recent (``keep`` frames), like deblur.LazyFrames for folders. Asking for a frame
    older than those kept decodes again from the start (the deblur command never does)."""

    def __init__(self, path: Path, keep: int = 64) -> None:
        self.path, self.keep = path, max(1, keep)
        self.count, self.size, self.fps = probe(path)
        self._cache: dict[int, torch.Tensor] = {}
        self._decoder = None
        self._next = 0

    def __len__(self) -> int:
        return self.count

    def _restart(self) -> None:
        av = _av()
        self.close()
        self._container = av.open(str(self.path))
        self._decoder = self._container.decode(self._container.streams.video[0])
        self._next = 0

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} of a {self.count}-frame video")
        if i in self._cache:
            return self._cache[i]
        if self._decoder is None or i < self._next:
            self._restart()
        while self._next <= i:
            frame = _to_tensor(next(self._decoder))
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))  # oldest first (insertion order)
            self._cache[self._next] = frame
            self._next += 1
        return self._cache[i]

    def close(self) -> None:
        if self._decoder is not None:
            self._container.close()
            self._decoder = None


class VideoWriter:
    """Encode (3, H, W) frames in [0, 1] into ``path`` at ``fps`` (codec from the suffix;
    ``crf``: H.264 / VP9 quality, lower is better, 0 = lossless H.264 luma)."""

    def __init__(self, path: Path, fps: Fraction | float, width: int, height: int,
                 crf: int = 18) -> None:
        av = _av()
        if not is_video(path):
            raise ValueError(f"output {path}: not a video suffix ({', '.join(VIDEO_SUFFIXES)})")
        codec = _CODECS.get(path.suffix.lower(), DEFAULT_CODEC)
        self.container = av.open(str(path), "w")
        rate = Fraction(fps).limit_denominator(1001 * 1000)
        options = {"crf": str(crf)} if codec in ("libx264", "libvpx-vp9") else {}
        if codec == "libvpx-vp9":
            options["b"] = "0"  # constant quality mode
        self.stream = self.container.add_stream(codec, rate=rate, options=options)
        self.stream.width, self.stream.height = width, height
        # 4:2:0 chroma (what players expect) needs even sizes; odd ones keep full chroma
        even = width % 2 == 0 and height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even or codec == "mpeg4" else "yuv444p"
        if codec == "mpeg4":
            self.stream.bit_rate = 40 * width * height  # about 1.5 bits a pixel at 25 fps

    def write(self, frame: torch.Tensor) -> None:
        av = _av()
        arr = frame.detach().float().clamp(0, 1).mul(255).round().byte()
        image = av.VideoFrame.from_ndarray(arr.permute(1, 2, 0).contiguous().cpu().numpy(),
                                           format="rgb24")
        for packet in self.stream.encode(image):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
