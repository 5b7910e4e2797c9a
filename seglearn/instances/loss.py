"""StarDist's loss: BCE on the object probability plus a probability-weighted distance loss."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def stardist_loss(prob_logits: torch.Tensor, dist_pred: torch.Tensor, prob_true: torch.Tensor,
                  dist_true: torch.Tensor, *, dist_weight: float = 0.2, background_reg: float = 1e-4) -> dict:
    """StarDist2D's training loss.

    Parameters
    ----------
    prob_logits : (N, 1, h, w) tensor
    dist_pred : (N, R, h, w) tensor
    prob_true : (N, 1, h, w) tensor
        ``edt_prob`` targets in [0, 1].
    dist_true : (N, R, h, w) tensor
    dist_weight : float
        Weight of the distance term (StarDist's ``train_loss_weights = (1, 0.2)``).
    background_reg : float
        Pulls predicted distances to 0 on background (StarDist's ``train_background_reg``).

    Returns
    -------
    dict
        ``loss`` (total), ``prob`` and ``dist`` terms.
    """
    bce = F.binary_cross_entropy_with_logits(prob_logits, prob_true)
    err = (dist_pred - dist_true).abs().mean(dim=1, keepdim=True)
    weight = prob_true
    norm = weight.mean().clamp_min(1e-6)
    dist = (weight * err).mean() / norm
    background = (prob_true <= 0).float()
    dist = dist + background_reg * (background * dist_pred.abs().mean(dim=1, keepdim=True)).mean()
    return {"loss": bce + dist_weight * dist, "prob": bce.detach(), "dist": dist.detach()}
