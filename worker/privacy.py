"""Optional client-side differential privacy on uploads: clip + Gaussian noise.

Each round, the worker's update is taken relative to the adapter it started the round from
(delta = uploaded - reference, over every uploaded tensor of every layer, as one vector), clipped
to L2 norm `clip_norm`, and N(0, (noise_multiplier * clip_norm)^2) noise is added to every
coordinate; reference + noised delta is what leaves the worker.

What it guarantees: each upload is the output of a Gaussian mechanism with sensitivity
`clip_norm` with respect to everything this worker's data did to its adapter in that round
(client-level DP per round; noise_multiplier sigma gives (epsilon, delta)-DP by the standard
Gaussian-mechanism bounds). What it does not: no privacy accounting across rounds is done here
(compose the per-round guarantee over the rounds yourself, e.g. with an RDP accountant); metrics
and example counts are sent in the clear; with `head_mode: cluster` the classifier head's rows
travel with the adapter and are clipped and noised together with it (their delta is part of the
same update), in the other head modes the head never leaves the worker; nothing is guaranteed when the noise multiplier is 0 (clipping only).
"""

from __future__ import annotations

import math

import torch

Layered = dict[int, dict[str, torch.Tensor]]


def privatise(
    update: Layered, reference: Layered, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> tuple[Layered, float]:
    """(reference + clipped, noised delta, the delta's norm before clipping)."""
    deltas = {layer: {n: t.float() - reference[layer][n].float() for n, t in named.items()} for layer, named in update.items()}
    norm = math.sqrt(sum(float(d.pow(2).sum()) for named in deltas.values() for d in named.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out: Layered = {}
    for layer, named in deltas.items():
        out[layer] = {}
        for name, delta in named.items():
            noisy = delta * scale
            if noise_multiplier > 0:
                noisy = noisy + torch.randn(delta.shape, generator=generator) * (noise_multiplier * clip_norm)
            out[layer][name] = (reference[layer][name].float() + noisy).to(update[layer][name].dtype)
    return out, norm
