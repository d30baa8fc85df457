"""Pairwise client distances over LoRA B matrices (docs/ALGORITHM.md, Procedure step 4).

Everything works on one stacked tensor ``B`` of shape ``(L, M, N, D)``: layers x modules x
clients x flattened B size. ``stack_b`` builds it from per-client ``{layer: {name: tensor}}``
dicts. ``layer_distances`` turns it into ``(L, N, N)`` layer distance matrices with the Gram
identity ``||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y`` evaluated as one batched matrix product over
the ``L * M`` (layer, module) pairs -- never a Python loop over client pairs. Products and sums are
accumulated in float64 (the compute dtype is a knob); layers are processed in chunks so that the
float64 working copy stays under a memory budget, and only the upper block triangle of each Gram
matrix is multiplied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

Metric = Literal["euclidean", "cosine"]
ClientAdapters = dict[int, dict[str, torch.Tensor]]

__all__ = ["Metric", "global_distance", "layer_distances", "stack_b"]

_DEFAULT_CHUNK_BYTES = 128 * 1024 * 1024  # compute-dtype working copy per chunk of layers (smaller is cache-friendlier)


def _default_filter(name: str) -> bool:
    return "lora_B" in name


def stack_b(
    per_client: Sequence[ClientAdapters],
    names_filter: Callable[[str], bool] = _default_filter,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stack per-client adapters into ``(L, M, N, D)``.

    Layers are taken in sorted order, tensor names within a layer in sorted order (after
    ``names_filter``), clients in list order. Every client must hold the same layers and names
    with the same shapes, and every layer the same number of selected names. Modules of different
    sizes (e.g. q_proj and v_proj under grouped-query attention) are zero-padded to the largest:
    padding changes no norm, dot product or distance, so every module's distance stays exact.
    """
    if not per_client:
        raise ValueError("stack_b needs at least one client")
    layers = sorted(per_client[0])
    names = {layer: sorted(n for n in per_client[0][layer] if names_filter(n)) for layer in layers}
    if not layers:
        raise ValueError("the first client holds no layers")
    counts = {len(v) for v in names.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every layer needs the same non-zero number of selected tensors, got {names}")
    for k, client in enumerate(per_client):
        if sorted(client) != layers:
            raise ValueError(f"client {k} holds layers {sorted(client)}, expected {layers}")
        for layer in layers:
            got = sorted(n for n in client[layer] if names_filter(n))
            if got != names[layer]:
                raise ValueError(f"client {k} layer {layer} holds {got}, expected {names[layer]}")
    d = max(per_client[0][layer][n].numel() for layer in layers for n in names[layer])
    out = torch.zeros((len(layers), counts.pop(), len(per_client), d), dtype=dtype)
    for li, layer in enumerate(layers):
        for mi, name in enumerate(names[layer]):
            size = per_client[0][layer][name].numel()
            for k, client in enumerate(per_client):
                t = client[layer][name]
                if t.numel() != size:
                    raise ValueError(f"client {k} {layer}/{name} has {t.numel()} elements, expected {size}")
                out[li, mi, k, :size].copy_(t.detach().reshape(-1))
    return out


def _upper_gram(flat: torch.Tensor, gram: torch.Tensor, block_rows: int) -> None:
    """Upper block triangle of the batched Gram matrices ``flat @ flat^T`` written into ``gram``.

    ``flat`` (b, N, D) -> ``gram`` (b, N, N). Row blocks of ``block_rows`` clients are multiplied
    against every client at or after the block (one batched GEMM per row block, never per pair),
    which saves up to half the flops; entries below the diagonal blocks are left untouched.
    """
    n = flat.shape[1]
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        torch.bmm(flat[:, s:e], flat[:, s:].transpose(1, 2), out=gram[:, s:e, s:])


def _chunk_distances(flat: torch.Tensor, gram: torch.Tensor, modules: int, metric: Metric, block_rows: int) -> torch.Tensor:
    """``flat``: (l * M, N, D) in the compute dtype -> (l, N, N) float64 mean-over-modules distances.

    ``gram`` is a reused (l * M, N, N) work buffer (finite values); it is overwritten in place, so
    the large per-chunk intermediates allocate nothing. Only its upper triangle is meaningful; the
    result is the upper triangle mirrored, hence exactly symmetric.
    """
    lm, n, _ = flat.shape
    _upper_gram(flat, gram, block_rows)
    sq = gram.diagonal(dim1=1, dim2=2).clone()  # squared norms, consistent with the products
    if metric == "euclidean":  # ||x||^2 + ||y||^2 - 2 x.y, clamped at 0, square root
        gram.mul_(-2.0).add_(sq.unsqueeze(2)).add_(sq.unsqueeze(1)).clamp_min_(0.0).sqrt_()
    else:  # 1 - cos; a zero-norm row has cos 0, i.e. distance 1 to every other client
        norms = sq.clamp_min(0.0).sqrt()
        inv = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))
        gram.mul_(inv.unsqueeze(2)).mul_(inv.unsqueeze(1)).clamp_(-1.0, 1.0).neg_().add_(1.0)
    dist = gram.view(lm // modules, modules, n, n).mean(dim=1, dtype=torch.float64)
    upper = torch.triu(dist, diagonal=1)
    return upper + upper.transpose(1, 2)  # mirror the upper triangle: exact symmetry, zero diagonal


def layer_distances(
    B: torch.Tensor,
    metric: Metric = "euclidean",
    compute_dtype: torch.dtype = torch.float64,
    max_chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
    block_rows: int = 256,
) -> torch.Tensor:
    """Layer distance matrices ``D^(l)_ij = mean_m dist(B_lmi, B_lmj)`` of shape ``(L, N, N)``.

    ``metric="euclidean"``: Frobenius distance via the Gram identity, negatives from cancellation
    clamped to 0 before the square root. ``metric="cosine"``: ``1 - cos`` similarity; a zero-norm
    row is at distance 1 from every other client and 0 from itself. The result is float64 and
    exactly symmetric with an exactly zero diagonal. Products are accumulated in ``compute_dtype``
    (float64 by default). Layers are processed in chunks whose compute-dtype copy stays under
    ``max_chunk_bytes`` (at least one layer per chunk; the work buffers are reused); within a chunk
    all layers and modules are one batch of GEMMs (see ``_upper_gram`` for ``block_rows``).
    """
    if B.dim() != 4:
        raise ValueError(f"B must be (L, M, N, D), got shape {tuple(B.shape)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    L, M, N, D = B.shape
    out = torch.empty((L, N, N), dtype=torch.float64)
    chunk = max(1, min(L, max_chunk_bytes // max(1, M * N * D * compute_dtype.itemsize)))
    buf = torch.empty((chunk * M, N, D), dtype=compute_dtype)
    gram = torch.zeros((chunk * M, N, N), dtype=compute_dtype)
    with torch.no_grad():
        for start in range(0, L, chunk):
            part = B[start : start + chunk].detach()
            rows = part.shape[0] * M
            buf[:rows].copy_(part.reshape(rows, N, D))
            out[start : start + chunk] = _chunk_distances(buf[:rows], gram[:rows], M, metric, block_rows)
    return out


def global_distance(Dl: torch.Tensor) -> torch.Tensor:
    """Global distance ``D = (1/L) sum_l D^(l)`` from ``(L, N, N)`` layer distances -> ``(N, N)``."""
    if Dl.dim() != 3 or Dl.shape[1] != Dl.shape[2]:
        raise ValueError(f"Dl must be (L, N, N), got shape {tuple(Dl.shape)}")
    return Dl.mean(dim=0)
