"""The run spec: what the coordinator holds for a run and hands to every worker at join (LoRA,
training, generation, the strategy's knobs, privacy, robust aggregation), as frozen pydantic models.
The process configs that embed it, and loading from YAML + env, are in common/config.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.chunking import DEFAULT_CHUNK_SIZE
from common.digest import DEFAULT_DIGEST, DigestName


class FrozenModel(BaseModel):
    """Immutable, and unknown keys are an error (named at load)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraConfig(FrozenModel):
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        ("query", "value"), min_length=1, description="Module names (peft target_modules) that get LoRA."
    )


HeadMode = Literal["frozen", "local", "cluster"]


class TrainConfig(FrozenModel):
    local_epochs: int = Field(2, ge=0, description="Local epochs per round (ignored when local_steps > 0).")
    local_steps: int = Field(0, ge=0, description="Fixed number of local optimiser steps per round; 0 = use epochs.")
    batch_size: int = Field(16, ge=1, description="Local mini-batch size.")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate of the LoRA parameters.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    max_seq_length: int = Field(128, ge=8, description="Tokens per example after truncation.")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches of batch_size whose gradients are summed into one optimiser step: the effective batch "
        "is batch_size x gradient_accumulation_steps on every worker (local_steps and epochs count optimiser steps).",
    )
    head_mode: HeadMode = Field(
        "local",
        description="Classifier head: frozen (seeded name-keyed init, never trained: the FedLEASE/FedRoRA protocol), "
        "local (trained, never uploaded) or cluster (trained, averaged per label name inside the worker's cluster).",
    )

    @model_validator(mode="before")
    @classmethod
    def _train_head_alias(cls, data: Any) -> Any:
        """The former `train_head: bool` still reads: true = head_mode local, false = frozen."""
        if isinstance(data, dict) and "train_head" in data:
            data = dict(data)
            flag = data.pop("train_head")
            if "head_mode" in data:
                raise ValueError("set head_mode or the deprecated train_head, not both")
            data["head_mode"] = "local" if str(flag).lower() in ("true", "1", "yes") else "frozen"
        return data

    @property
    def train_head(self) -> bool:
        return self.head_mode != "frozen"


class GenerationConfig(FrozenModel):
    """How a causal_lm run's workers generate answers for evaluation (ROUGE, task score)."""

    max_new_tokens: int = Field(32, ge=1, description="Most tokens generated per validation prompt.")
    num_beams: int = Field(1, ge=1, description="1 = greedy decoding; > 1 = beam search with this many beams.")


# LoRA targets of a causal_lm run whose target_modules is left at the classification default
CAUSAL_LM_TARGETS = ("q_proj", "v_proj")


class FedTreeConfig(FrozenModel):
    """FedTreeLoRA knobs; defaults and where they come from: docs/ALGORITHM.md."""

    warmup_rounds: int = Field(5, ge=1, description="Rounds of local-only training before the tree is built.")
    window: int = Field(3, ge=1, description="K: a layer's cut may add at most K-1 clusters to the layer below's.")
    tau: float = Field(0.1, description="phi(1): the score of keeping a layer at one cluster.")
    linkage: Literal["average", "complete", "single", "ward"] = Field("average", description="Agglomerative linkage of the tree.")
    metric: Literal["euclidean", "cosine", "span"] = Field(
        "span",
        description="Distance between clients' LoRA factors: span (default, beyond the paper: how far apart the subspaces "
        "are that the factors write into (B's columns) or read from (A's rows)), euclidean or cosine (docs/ALGORITHM.md).",
    )
    distance_on: Literal["B", "A"] = Field(
        "B",
        description="LoRA factor the client distance compares: B (default, the paper's factor: the output side, where "
        "the task's head error lands) or A (the input side, where the client's texts lie).",
    )
    rebuild_every: int = Field(0, ge=0, description="Rebuild the tree every N rounds after warmup; 0 = only once.")
    late_join: Literal["place", "mean"] = Field(
        "place",
        description="A worker that joins after the tree is built: place (beyond the paper) = it runs its own warmup of "
        "late_warmup_rounds, uploads its A and B and is placed in the tree without moving anyone; mean (the behaviour "
        "before placement existed, kept as an ablation) = it gets everyone's mean in every layer at once and never shapes "
        "a cluster.",
    )
    late_warmup_rounds: int | None = Field(
        None,
        ge=1,
        description="late_join place: rounds of local training of a late joiner (from the shared seeded init) before it "
        "uploads its A and B to be placed; None = warmup_rounds.",
    )
    late_threshold: float | None = Field(
        1.0,
        gt=0,
        description="late_join place: a late joiner whose mean distance to the cluster it would join in a layer exceeds "
        "this times that cluster's merge distance at the cut (its average-linkage distance to the nearest other cluster "
        "of the layer) gets its own branch from that layer down (its own expert + the external one); None = always join.",
    )
    theta_lr: float = Field(1e-2, gt=0, description="Learning rate of the mixing logits theta (own optimiser group).")
    lambda_init: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Initial lambda = sigmoid(theta), the cluster expert's weight in every split layer (the paper starts at "
        "0.5; 0.8 was chosen on the accuracy benchmark's tuning split, docs/BENCHMARKS.md).",
    )
    fixed_k: int | None = Field(None, ge=1, description="Ablation: every layer uses this many clusters of the tree.")
    cluster_only: bool = Field(False, description="Ablation: lambda = 1 everywhere (no external expert).")
    personal: bool = Field(
        False,
        description="Beyond the paper: a third, personal expert per layer (the client's warmup adapter, trained locally, "
        "never uploaded), mixed with the cluster and external experts by softmax(phi_l).",
    )
    personal_init: float = Field(
        1 / 3, gt=0, lt=1, description="personal: the personal expert's initial weight p0 in every layer."
    )


class PrivacyConfig(FrozenModel):
    """Client-side differential privacy on uploads (see worker/privacy.py for what it guarantees)."""

    clip_norm: float | None = Field(None, gt=0, description="Clip each round's update (delta) to this L2 norm; None = off.")
    noise_multiplier: float = Field(0.0, ge=0, description="Gaussian noise std as a multiple of clip_norm.")


class RobustConfig(FrozenModel):
    """Robust aggregation inside each cluster (coordinator/robust.py); `mean` streams, the others buffer a round."""

    method: Literal["mean", "clip", "median", "trimmed_mean"] = Field(
        "mean", description="mean | clip (centred norm clipping) | median (coordinate-wise) | trimmed_mean."
    )
    clip_norm: float | None = Field(
        None, gt=0, description="clip: largest distance of an update from the group's median; None = the median distance."
    )
    trim_fraction: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: fraction dropped at each end per coordinate.")


class RunConfig(FrozenModel):
    strategy: str = Field("fedit", description="Aggregation strategy: one of coordinator.strategies.STRATEGIES.")
    task: Literal["classification", "causal_lm"] = Field(
        "classification",
        description="classification (sequence classifier, local head) or causal_lm (instruction -> response generation).",
    )
    rounds: int = Field(5, ge=1, description="Number of federated rounds.")
    seed: int = Field(0, ge=0, description="Run seed: fixes the LoRA A init and the head init of every worker.")
    min_workers: int = Field(1, ge=1, description="Workers that must have joined before round 1 starts.")
    quorum: int | None = Field(None, ge=1, description="Pushes that close a round early; None = every participant of the round.")
    round_deadline_s: float = Field(1800.0, gt=0, description="A round closes at this age even without quorum.")
    fedper_shared_layers: int | None = Field(
        None, ge=0, description="fedper: the first L_s layers are shared; None = half of the layers."
    )
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1024, le=4 << 20, description="Bytes per transfer chunk.")
    lora: LoraConfig = Field(default_factory=LoraConfig)  # type: ignore[arg-type]
    train: TrainConfig = Field(default_factory=TrainConfig)  # type: ignore[arg-type]
    fedtree: FedTreeConfig = Field(default_factory=FedTreeConfig)  # type: ignore[arg-type]
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)  # type: ignore[arg-type]
    wire_dtype: Literal["bf16", "fp16"] | None = Field(
        None,
        description="Send float32 adapter tensors as bf16/fp16 both ways (half the bytes) and restore float32 on "
        "arrival; None = exact float32. Sums stay float32.",
    )
    digest: DigestName = Field(
        DEFAULT_DIGEST,
        description="Digest that checks every transferred blob: blake3 (fast) or sha256 (lets protocol 1.0 workers join).",
    )
    robust: RobustConfig = Field(default_factory=RobustConfig)  # type: ignore[arg-type]
    generation: GenerationConfig = Field(default_factory=GenerationConfig)  # type: ignore[arg-type]

    @model_validator(mode="before")
    @classmethod
    def _causal_lm_targets(cls, data: Any) -> Any:
        """A causal_lm run whose lora.target_modules is left at the classification default
        (query, value) puts LoRA on the llama-style attention projections q_proj, v_proj."""
        if not isinstance(data, dict) or data.get("task") != "causal_lm":
            return data
        lora = data.get("lora")
        if isinstance(lora, LoraConfig):
            lora = lora.model_dump()
        lora = dict(lora or {})
        if tuple(lora.get("target_modules") or LoraConfig().target_modules) == LoraConfig().target_modules:
            lora["target_modules"] = CAUSAL_LM_TARGETS
        return {**data, "lora": lora}
