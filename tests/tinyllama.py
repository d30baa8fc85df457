"""A tiny llama (hidden 32, 2 layers) with a small byte-level BPE tokenizer, built offline, and
learnable prompt/response data for causal_lm tests (importable from any test folder)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "cat dog sun moon red blue tree lake fish bird one two three four five six".split()
CORPUS = [f"copy: {' '.join(WORDS[i : i + 4])}" for i in range(len(WORDS))] + ["reverse the words", "0123456789 + - = , . ? !"]


def write_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised LlamaForCausalLM and its tokenizer (eos, pad, bos) to `path`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1, special_tokens=["<pad>", "<bos>", "<eos>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def write_prompt_data(root: Path, n_train: int = 16, n_val: int = 6, seed: int = 0, reverse: bool = False) -> Path:
    """A learnable prompt/response dataset: copy (or reverse) three words."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                words = rng.sample(WORDS, 3)
                answer = list(reversed(words)) if reverse else words
                verb = "reverse" if reverse else "copy"
                fh.write(json.dumps({"prompt": f"{verb}: {' '.join(words)}", "response": " ".join(answer)}) + "\n")
    (root / "meta.json").write_text(json.dumps({"task_type": "causal_lm", "task": "copy/reverse", "labels": []}))
    return root
