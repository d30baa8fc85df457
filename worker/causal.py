"""Causal-LM tasks on a worker: prompt formatting, loss masking, local training, generation + scoring.

A training sequence is  format(prompt) ++ response ++ EOS,  tokenised in two parts so the
boundary is exact; labels are -100 on the prompt and on padding, so the loss covers response
tokens only. The prompt goes through the tokenizer's chat template when it has one (an
instruct model's own format), else it is the prompt plus a newline. Evaluation generates
(greedy or beam search) from the left-padded prompts and scores against the references.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Sequence

import torch

from common.config import GenerationConfig, TrainConfig
from worker.data.prompts import PromptExample
from worker.generation import rouge, task_score
from worker.model import LoraModel
from worker.train import optimise

IGNORE = -100


def format_prompt(tokenizer: object, prompt: str) -> str:
    """The text the model sees before its answer."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return str(text)
    return prompt + "\n"


def pad_id(tokenizer: object) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    if pid is None:
        pid = getattr(tokenizer, "eos_token_id", None)
    return int(pid or 0)


def _ids(tokenizer: object, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]


def encode_train(tokenizer: object, batch: Sequence[PromptExample], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding tokens).

    Over-long pairs keep at most half of `max_len` for the response and cut the prompt from the
    left (its end, with the template's answer header, stays next to the response)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    rows: list[tuple[list[int], list[int]]] = []
    for ex in batch:
        prompt = _ids(tokenizer, format_prompt(tokenizer, ex.prompt))
        response = _ids(tokenizer, ex.response) + ([int(eos)] if eos is not None else [])
        if len(prompt) + len(response) > max_len:
            response = response[: min(len(response), max(max_len - len(prompt), max_len // 2))]
            prompt = prompt[len(prompt) - (max_len - len(response)) :]
        rows.append((prompt, response))
    width = max(len(p) + len(r) for p, r in rows)
    pid = pad_id(tokenizer)
    ids = torch.full((len(rows), width), pid, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        n, m = len(prompt), len(response)
        ids[i, : n + m] = torch.tensor(prompt + response)
        mask[i, : n + m] = 1
        labels[i, n : n + m] = torch.tensor(response)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_prompts(tokenizer: object, prompts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Left-padded formatted prompts (cut from the left to `max_len`) for generation."""
    rows = [_ids(tokenizer, format_prompt(tokenizer, p))[-max_len:] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def train_causal(
    lm: LoraModel,
    examples: Sequence[PromptExample],
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    extra_groups: Sequence[tuple[list[torch.nn.Parameter], float]] = (),
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """Local training on response tokens only; same loop (and seeding) as the classifier's."""
    return optimise(
        lm,
        examples,
        lambda batch: encode_train(lm.tokenizer, batch, cfg.max_seq_length),
        cfg,
        seed,
        desc,
        progress,
        extra_groups,
        stop,
    )


@torch.no_grad()
def generate(lm: LoraModel, prompts: Sequence[str], gen: GenerationConfig, max_len: int, batch_size: int = 16) -> list[str]:
    """Decoded continuations (special tokens dropped, stripped) of each prompt."""
    lm.model.eval()
    tok = lm.tokenizer
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = lm.hardware.to_device(encode_prompts(tok, prompts[start : start + batch_size], max_len))
        with lm.hardware.autocast():
            produced = lm.model.generate(  # type: ignore[operator]  # peft forwards to the base model
                **enc,
                max_new_tokens=gen.max_new_tokens,
                num_beams=gen.num_beams,
                do_sample=False,
                pad_token_id=pad_id(tok),
                eos_token_id=tok.eos_token_id,
            )
        new = produced[:, enc["input_ids"].shape[1] :].cpu()
        out += [text.strip() for text in tok.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.no_grad()
def evaluate_causal(
    lm: LoraModel, examples: Sequence[PromptExample], cfg: TrainConfig, gen: GenerationConfig, batch_size: int = 16
) -> dict[str, float]:
    """ROUGE-1/2/L of generations against the references, the data's own task score (if it names
    a scorer), and the mean response-token loss, on a validation split."""
    if not examples:
        return {}
    lm.model.eval()
    losses = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        with lm.hardware.autocast():
            out = lm.model(**lm.hardware.to_device(encode_train(lm.tokenizer, batch, cfg.max_seq_length)))
        losses.append((float(out.loss), len(batch)))
    predictions = generate(lm, [e.prompt for e in examples], gen, cfg.max_seq_length, batch_size)
    metrics = rouge(predictions, [e.response for e in examples])
    score = task_score(predictions, examples)
    if score is not None:
        metrics["task_score"] = score
    metrics["loss"] = sum(loss * n for loss, n in losses) / len(examples)
    metrics["mean_new_words"] = statistics.fmean(len(p.split()) for p in predictions)
    return metrics
