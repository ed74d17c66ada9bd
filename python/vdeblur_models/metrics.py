"""Image quality metrics for deblurring: PSNR and SSIM, on (..., C, H, W) tensors in [0, 1].

SSIM is the standard one of Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03, population (biased) variances, computed per channel over the positions
where the whole window fits inside the image ("valid"), averaged over channels and positions.
That is what ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=1)`` computes (its reflect-padded border is cropped
away by half a window), and what the video-deblurring papers report.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.dim() < 3:
        raise ValueError(f"pred: expected (..., C, H, W), got {tuple(pred.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image.

    pred, target: (..., C, H, W) -> (...,) one value per image (float64). Identical images give
    inf."""
    _check_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity of each image (Gaussian window, valid positions, mean over C).

    pred, target: (..., C, H, W) with H, W >= 11 -> (...,) one value per image (float64)."""
    _check_pair(pred, target)
    *lead, c, h, w = pred.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    x = pred.double().reshape(-1, 1, h, w)
    y = target.double().reshape(-1, 1, h, w)
    g = gaussian_window().to(x.device)
    # The 2-D Gaussian is separable: filter rows, then columns.
    win_h, win_w = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, win_h), win_w)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(*lead, c).mean(-1)


def mean_finite(values: list[float]) -> float:
    """Mean of PSNR values, ignoring inf (identical frames) unless all are inf."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf
