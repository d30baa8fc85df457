"""FedALT's worker: its own adapter plus the pulled rest of world, mixed per token (worker/fedalt.py).

The mixers are built with the model (`prepare`) and train with the own adapter at the run's rate;
pulls (EXTERNAL) replace the frozen rest-of-world adapter, never the own one. Checkpoint keys:
external/<layer>/<name> (the rest of world) and fedalt/<module>/<weight|bias> (the mixers), so a
restarted worker keeps its mixers. Export: the own LoRA as the PEFT adapter plus `rest_of_world/`
and `fedalt_mixers.safetensors` beside it (worker/fedalt.py says how to load them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.fedalt import RestOfWorldMixer
from worker.model import LoraModel
from worker.strategies.base import LayerTensors, Pulled, Tensors, WorkerStrategy


class FedALTWorker(WorkerStrategy):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mixer: RestOfWorldMixer | None = None

    @property
    def mixer(self) -> RestOfWorldMixer:
        if self._mixer is None:
            raise RuntimeError("fedalt worker strategy used before prepare()")
        return self._mixer

    def prepare(self, lm: LoraModel) -> None:
        super().prepare(lm)
        self._mixer = RestOfWorldMixer(lm, self.run.lora)

    def apply(self, round: int, pulled: Pulled) -> None:
        self.mixer.load(pulled)

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        tensors = {f"external/{layer}/{n}": t for layer, named in self.mixer.external_layers().items() for n, t in named.items()}
        for key, tensor in self.mixer.mixer_state().items():
            module, param = key.rsplit(".", 1)
            tensors[f"fedalt/{module}/{param}"] = tensor
        return tensors, {}

    def restore(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        external: LayerTensors = {}
        mixers: Tensors = {}
        for key, tensor in tensors.items():
            kind, rest = key.split("/", 1)
            if kind == "external":
                layer_id, name = rest.split("/", 1)
                external.setdefault(int(layer_id), {})[name] = tensor
            elif kind == "fedalt":
                mixers[rest.replace("/", ".")] = tensor
        for layer, named in external.items():
            self.mixer.load_external(layer, named)
        if mixers:  # a checkpoint written before the mixers were kept has none: they start afresh
            self.mixer.load_mixers(mixers)

    def export_extras(self, out_dir: Path) -> list[Path]:
        return self.mixer.save_exported(out_dir, self.run.lora, self.run.task)
