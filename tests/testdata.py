"""Small, learnable private datasets for tests (importable from any test folder)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = {
    "sports": "match goal team score league player coach win",
    "tech": "software chip computer network code data robot phone",
    "food": "bread soup cheese fruit dinner recipe bake spice",
}


def write_client_data(root: Path, labels: tuple[str, ...], n_train: int = 24, n_val: int = 12, seed: int = 0) -> Path:
    """A tiny, learnable private dataset: texts made of label-specific words."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                label = labels[i % len(labels)]
                words = WORDS[label].split()
                fh.write(json.dumps({"text": " ".join(rng.choices(words, k=6)), "label": label}) + "\n")
    (root / "meta.json").write_text(json.dumps({"labels": sorted(labels)}))
    return root
