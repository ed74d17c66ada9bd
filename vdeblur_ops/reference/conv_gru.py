"""ConvGRU gates written the way a user would: chunks and element-wise torch ops (TSV-RNN Eqs. 3-6).

Channel chunks are ordered [z, r, n]. The paper's update is h' = (1 - z) * h + z * h_hat: z weights
the NEW state (the opposite of torch.nn.GRU). Every tensor is (N, C, *spatial) for h, and the gate
tensors carry 2C (z, r) or 3C (z, r, n) channels.
"""
from __future__ import annotations

import torch


def conv_gru_reset(gx_zr: torch.Tensor, gh_zr: torch.Tensor,
                   h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper form, before U: z = sigmoid(gx_z + gh_z), r = sigmoid(gx_r + gh_r) -> (z, r * h)."""
    gx_z, gx_r = gx_zr.chunk(2, dim=1)
    gh_z, gh_r = gh_zr.chunk(2, dim=1)
    z = torch.sigmoid(gx_z + gh_z)
    r = torch.sigmoid(gx_r + gh_r)
    return z, r * h


def conv_gru_update(z: torch.Tensor, gx_n: torch.Tensor, gh_n: torch.Tensor,
                    h: torch.Tensor) -> torch.Tensor:
    """Paper form, after U: h_hat = tanh(gx_n + gh_n) -> h' = (1 - z) * h + z * h_hat."""
    h_hat = torch.tanh(gx_n + gh_n)
    return (1 - z) * h + z * h_hat


def conv_gru_gates(gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Reset-after form: gx, gh with 3C channels [z, r, n];
    h_hat = tanh(gx_n + r * gh_n) -> h' = (1 - z) * h + z * h_hat."""
    gx_z, gx_r, gx_n = gx.chunk(3, dim=1)
    gh_z, gh_r, gh_n = gh.chunk(3, dim=1)
    z = torch.sigmoid(gx_z + gh_z)
    r = torch.sigmoid(gx_r + gh_r)
    h_hat = torch.tanh(gx_n + r * gh_n)
    return (1 - z) * h + z * h_hat
