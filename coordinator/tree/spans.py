"""Span distance: how far apart the subspaces are that clients' LoRA factors write into
(docs/ALGORITHM.md, "The span distance").

For a LoRA module with update ``B @ A`` (B: ``d_out x r``, A: ``r x d_in``), the span of B's
columns is the set of output directions the adapter can move; the span of A's rows is the set of
input directions it reads. The span distance compares those subspaces, not the matrices:

    d_ij = || P_i - P_j ||_F = sqrt(k_i + k_j - 2 ||Q_i^T Q_j||_F^2)

with ``Q`` an orthonormal basis of the span (numerical rank ``k``, singular values above
``RANK_RTOL`` x the largest) and ``P = Q Q^T`` its projector (the chordal / projection distance
between subspaces). It is blind to the sign and the size of the directions and to the gauge of
LoRA (``B Q``, ``Q^T A`` for any orthogonal Q give the same update): two clients of one task
skewed towards different labels push B along the same head-error directions with different
weights and signs, so their spans agree although their B matrices point apart.

Random subspaces of a wide layer are almost orthogonal, so every pair's distance sits close to
its maximum and only the part above the closest pair carries structure. ``span_layer_distances``
therefore rescales each layer's matrix to [0, 1] over its client pairs (closest pair 0, farthest
1) before it is averaged into the global distance and scored by silhouettes; it is computed over
whichever clients are compared (the build's workers; a late joiner and the members it is placed
among).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

RANK_RTOL = 1e-3  # singular values below this x the largest do not count towards the span

__all__ = ["RANK_RTOL", "span_basis", "span_layer_distances"]


def span_basis(t: torch.Tensor, rows: bool) -> torch.Tensor:
    """Orthonormal basis ``(d, k)`` of the span of ``t``'s columns (``rows=False``) or rows (``rows=True``)."""
    m = t.detach().to(torch.float64)
    if rows:
        m = m.T
    if m.numel() == 0:
        return m.new_zeros((m.shape[0], 0))
    if not bool(torch.isfinite(m).all()):
        raise ValueError("span of a non-finite tensor")
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    k = int((s > s[0] * RANK_RTOL).sum()) if float(s[0]) > 0 else 0
    return u[:, :k]


def _module_distances(bases: list[torch.Tensor]) -> np.ndarray:
    """Projection distances between the clients' subspaces of one module: ``(N, N)``."""
    ks = torch.tensor([q.shape[1] for q in bases], dtype=torch.float64)
    cat = torch.cat(bases, dim=1)  # (d, sum k): every basis vector of every client
    gram = (cat.T @ cat).square()  # squared cosines between all basis vectors
    edges = np.concatenate([[0], np.cumsum([q.shape[1] for q in bases])])
    n = len(bases)
    overlap = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        rows = gram[edges[i] : edges[i + 1]]
        for j in range(i, n):
            overlap[i, j] = overlap[j, i] = rows[:, edges[j] : edges[j + 1]].sum()
    sq = (ks[:, None] + ks[None, :] - 2 * overlap).clamp_min(0.0)
    sq.fill_diagonal_(0.0)
    return sq.sqrt().numpy()


def _rescale(D: np.ndarray) -> np.ndarray:
    """Off-diagonal entries mapped to [0, 1] (closest pair 0, farthest 1); all equal -> 1."""
    n = D.shape[0]
    if n < 2:
        return np.zeros_like(D)
    off = ~np.eye(n, dtype=bool)
    lo, hi = float(D[off].min()), float(D[off].max())
    out = np.ones_like(D) if hi - lo <= 1e-12 * max(1.0, hi) else (D - lo) / (hi - lo)
    np.fill_diagonal(out, 0.0)
    return out


def span_layer_distances(
    per_client: Sequence[dict[str, torch.Tensor]],
    names_filter: Callable[[str], bool],
    rows: bool,
) -> np.ndarray:
    """One layer's span distance ``(N, N)`` between clients (each a ``{name: tensor}`` dict of that
    layer): the mean over the selected modules of the projection distance, rescaled to [0, 1]
    over the client pairs. ``rows``: compare row spans (LoRA A) instead of column spans (LoRA B)."""
    if not per_client:
        raise ValueError("span distances need at least one client")
    names = sorted(n for n in per_client[0] if names_filter(n))
    if not names:
        raise ValueError("no tensor of the layer passes the filter")
    for k, client in enumerate(per_client):
        got = sorted(n for n in client if names_filter(n))
        if got != names:
            raise ValueError(f"client {k} holds {got}, expected {names}")
    n = len(per_client)
    total = np.zeros((n, n))
    with torch.no_grad():
        for name in names:
            shape = per_client[0][name].shape
            for k, client in enumerate(per_client):
                if client[name].shape != shape:
                    raise ValueError(f"client {k} {name} has shape {tuple(client[name].shape)}, expected {tuple(shape)}")
            total += _module_distances([span_basis(client[name], rows) for client in per_client])
    return _rescale(total / len(names))
