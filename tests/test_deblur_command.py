"""The inference command (python/vdeblur_models/deblur.py): window planning, out-of-memory
retries, frame folders in and out, weights, bad input, and every registered model through it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vdeblur_models
from vdeblur_models import deblur

from helpers import dstnet_official_checkpoint


ROOT = Path(__file__).resolve().parents[1]


def _write_frames(folder: Path, names, h=18, w=22) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name in names:
        arr = (np.random.rand(h, w, 3) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / name)
        arrays.append(arr)
    return arrays


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_plan_window_tiles_the_sequence():
    """Every frame is kept exactly once, in order, with its context inside the window."""
    for n in range(1, 14):
        for chunk in range(1, 9):
            for overlap in range(3):
                for margin in ((0, 0), (1, 1), (2, 1)):
                    if chunk < sum(margin) + 1:
                        continue
                    first, kept = 0, []
                    while first < n:
                        win = deblur.plan_window(first, n, chunk, overlap, margin)
                        assert 0 <= win.start < win.stop <= n + sum(margin)
                        assert win.stop - win.start <= chunk
                        assert win.start + margin[0] <= win.keep_start < win.keep_stop <= win.stop - margin[1]
                        kept += range(win.keep_start - margin[0], win.keep_stop - margin[0])
                        first = kept[-1] + 1
                    assert kept == list(range(n))


class _Shift(torch.nn.Module):
    """Returns input frames a .. T-b-1 unchanged (like a model that needs past / future)."""

    def __init__(self, a: int, b: int, oom_above: int | None = None) -> None:
        super().__init__()
        self.a, self.b, self.oom_above, self.calls = a, b, oom_above, []

    def forward(self, x):
        probe = x.shape[-1] <= 32  # deblur_sequence's small probe clip always fits
        if self.oom_above is not None and x.shape[1] > self.oom_above and not probe:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if not probe:
            self.calls.append(x.shape[1])
        return x[:, self.a:x.shape[1] - self.b]


class _DeclaredShift(_Shift):
    def output_frames(self, num_frames: int) -> range:
        return range(self.a, num_frames - self.b)


@pytest.mark.parametrize("a,b,declared", [(0, 0, False), (2, 2, False), (1, 0, True), (2, 2, True)])
def test_deblur_sequence_edges_and_out_of_memory(a, b, declared):
    """Margins come from a probe run (symmetric) or the model's output_frames (any); chunks that
    run out of memory are halved and retried; every frame comes out, in order."""
    seq = [torch.full((3, 4, 40), float(i)) for i in range(11)]
    model = (_DeclaredShift if declared else _Shift)(a, b, oom_above=a + b + 3)
    got = {}
    chunk = deblur.deblur_sequence(model, seq, chunk=12, overlap=1, device=torch.device("cpu"),
                                   sink=lambda i, f: got.setdefault(i, f))
    assert sorted(got) == list(range(11))
    assert all(torch.equal(got[i], seq[i]) for i in range(11))
    assert chunk <= a + b + 3 and max(model.calls) <= a + b + 3


def test_deblur_command(tmp_path):
    names = ["f8.png", "f9.png", "f10.jpg", "f11.png", "f12.png"]  # name order is numeric
    _write_frames(tmp_path / "in", names)
    torch.manual_seed(0)
    model = vdeblur_models.build("dstnet", preset="tiny")
    weights = tmp_path / "dstnet_tiny.pth"
    torch.save(dstnet_official_checkpoint(model), weights)
    cmd = [sys.executable, "-m", "vdeblur_models.deblur", "--model", "dstnet", "--preset", "tiny",
           "--weights", str(weights), "--input", str(tmp_path / "in"),
           "--output", str(tmp_path / "out"), "--chunk", "3", "--overlap", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'python'}:{ROOT}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "5/5 frames" in res.stderr and "untrained" not in res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    for name in names:
        assert _read(tmp_path / "out" / name).shape == (18, 22, 3)

    # In process, one chunk holding the whole clip: the frames are the model's output, rounded.
    deblur.main(["--model", "dstnet", "--preset", "tiny", "--weights", str(weights), "--input",
                 str(tmp_path / "in"), "--output", str(tmp_path / "whole"), "--chunk", "5",
                 "--device", "cpu"])
    clip = torch.stack([deblur.read_frame(tmp_path / "in" / n) for n in names]).unsqueeze(0)
    with torch.no_grad():
        want = model(clip)[0].clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, name in enumerate(names):
        got = _read(tmp_path / "whole" / name)
        if name.endswith(".png"):  # (JPEG output is lossy: checked for its size above)
            assert np.array_equal(got, want[i]), name


def test_deblur_command_without_weights_warns(tmp_path, capsys):
    _write_frames(tmp_path / "in", ["a.png", "b.png"], h=9, w=7)
    deblur.main(["--model", "dstnet", "--preset", "tiny", "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert "untrained" in err and "no useful output" in err.lower()
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_deblur_command_refuses_bad_input(tmp_path):
    _write_frames(tmp_path / "in", ["a.png", "b.png"], h=9, w=7)
    other = dstnet_official_checkpoint(vdeblur_models.build("dstnet", preset="tiny", num_feat=6))
    torch.save(other, tmp_path / "other.pth")
    base = ["--model", "dstnet", "--preset", "tiny", "--output", str(tmp_path / "out"),
            "--device", "cpu"]
    with pytest.raises(SystemExit, match="num_feat=6"):
        deblur.main(base + ["--input", str(tmp_path / "in"), "--weights", str(tmp_path / "other.pth")])
    with pytest.raises(SystemExit, match="no such file"):
        deblur.main(base + ["--input", str(tmp_path / "in"), "--weights", str(tmp_path / "x.pth")])
    _write_frames(tmp_path / "mixed", ["a.png"], h=9, w=7)
    _write_frames(tmp_path / "mixed", ["b.png"], h=8, w=7)
    with pytest.raises(SystemExit, match="one size"):
        deblur.main(base + ["--input", str(tmp_path / "mixed")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no PNG or JPEG"):
        deblur.main(base + ["--input", str(tmp_path / "empty")])


@pytest.mark.parametrize("name", sorted(m for m, presets in vdeblur_models.list_models().items()
                                        if "tiny" in presets))
def test_deblur_command_runs_every_registered_model(tmp_path, name):
    """The command goes through the registry only: every model's tiny preset deblurs every
    frame of a short clip, whatever frames its forward returns."""
    _write_frames(tmp_path / "in", [f"{i}.png" for i in range(4)], h=12, w=10)
    deblur.main(["--model", name, "--preset", "tiny", "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), "--chunk", "4", "--overlap", "0",
                 "--device", "cpu"])
    outs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outs] == [f"{i}.png" for i in range(4)]
    assert all(_read(p).shape == (12, 10, 3) for p in outs)
