"""Video files through PyAV, and the deblur command on videos with ground truth."""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from vdeblur_models import deblur, metrics

av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")
from vdeblur_models import video_io  # noqa: E402


def smooth_frames(n: int, h: int, w: int) -> list[torch.Tensor]:
    """Random smooth colour frames (lossy codecs keep them well)."""
    low = torch.rand(n, 3, 4, 4)
    return list(torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear",
                                                align_corners=False))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi", ".webm"])
def test_video_roundtrip_keeps_count_size_rate(tmp_path: Path, suffix: str):
    frames = smooth_frames(9, 30, 43)  # odd width: the writer must still keep the size
    fps = Fraction(24000, 1001)
    path = tmp_path / f"clip{suffix}"
    with video_io.VideoWriter(path, fps, 43, 30) as writer:
        for f in frames:
            writer.write(f)
    video = video_io.VideoFrames(path, keep=3)
    assert len(video) == 9 and video.size == (43, 30)
    assert abs(float(video.fps) - float(fps)) < 1e-3
    for i in (0, 4, 8, 2):  # 2 after 8: older than the 3 kept, decoded again from the start
        assert video[i].shape == (3, 30, 43)
        # lossy codecs, limited colour range: 29.8 dB seen once with .avi's MPEG-4 on a random
        # draw, so the bound is 27 dB; the order check below is what tells frames apart
        assert metrics.psnr(video[i], frames[i]).item() > 27, f"frame {i}"
    # frame order survives: each decoded frame is closest to its own source frame
    errs = torch.tensor([[metrics.psnr(video[i], frames[j]).item() for j in range(9)]
                         for i in range(9)])
    assert torch.equal(errs.argmax(1), torch.arange(9))
    with pytest.raises(IndexError):
        video[9]


def test_video_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="no such file"):
        video_io.VideoFrames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="not a video suffix"):
        video_io.VideoWriter(tmp_path / "x.png", 30, 8, 8)


def test_deblur_video_in_video_out_and_gt(tmp_path: Path, capsys):
    blurry, sharp = smooth_frames(6, 24, 32), smooth_frames(6, 24, 32)
    src = tmp_path / "in.mp4"
    with video_io.VideoWriter(src, 25, 32, 24) as writer:
        for f in blurry:
            writer.write(f)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for i, f in enumerate(sharp):
        deblur.write_frame(f, gt_dir / f"{i:03d}.png")
    common = ["--model", "dstnet", "--preset", "tiny", "--device", "cpu", "--chunk", "4"]

    out_video = tmp_path / "out.mkv"
    assert deblur.main([*common, "--input", str(src), "--output", str(out_video)]) == 0
    result = video_io.VideoFrames(out_video)
    assert len(result) == 6 and result.size == (32, 24) and result.fps == 25

    out_dir = tmp_path / "out"
    capsys.readouterr()
    assert deblur.main([*common, "--input", str(src), "--output", str(out_dir),
                        "--gt", str(gt_dir)]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"PSNR (-?[\d.]+) dB, SSIM (-?[\d.]+) over 6 frames", printed)
    assert match, printed
    written = sorted(out_dir.glob("*.png"))
    assert len(written) == 6
    outs = torch.stack([deblur.read_frame(p) for p in written])
    gts = torch.stack([deblur.read_frame(p) for p in sorted(gt_dir.glob("*.png"))])
    assert float(match.group(1)) == pytest.approx(metrics.psnr(outs, gts).mean().item(), abs=2e-3)
    assert float(match.group(2)) == pytest.approx(metrics.ssim(outs, gts).mean().item(), abs=2e-4)

    with pytest.raises(SystemExit, match="--gt has 5 frames"):
        (gt_dir / "005.png").unlink()
        deblur.main([*common, "--input", str(src), "--output", str(out_dir), "--gt", str(gt_dir)])
