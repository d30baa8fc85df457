"""head_mode cluster: per-group, per-label head aggregation, the head blob's validation, the
strategies' head groups, the engine's width check and persistence, the worker's row helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_fedtree_strategy import SCHEMA as TREE_SCHEMA
from test_fedtree_strategy import WORKERS, planted

from common import codec
from common.chunking import BlobKey, Role, split
from common.config import CoordinatorConfig, FedTreeConfig, RobustConfig, RunConfig, TrainConfig
from common.errors import InvalidArgument
from common.schema import HEAD_LAYER, MAX_HEAD_LABELS, TensorSpec, UploadSpec, select, validate_head
from common.types import JoinRequest, PushHeader
from coordinator.engine import PushTicket, RoundEngine
from coordinator.heads import HeadSums
from coordinator.state import StateStore
from coordinator.strategies import create_strategy
from coordinator.strategies.fedtree import FedTree
from coordinator.transfer import UpdateReceiver

CLUSTER = TrainConfig(head_mode="cluster")
A, B = "q.lora_A.weight", "q.lora_B.weight"
SCHEMA = {layer: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")} for layer in (0, 1)}


def row(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# -- HeadSums ------------------------------------------------------------------------------------


def test_mean_per_label_inside_a_group_weighted_by_examples() -> None:
    h = HeadSums()
    h.add("x", "g", {"t/a": row(1, 2, 3), "t/b": row(0, 0, 4)}, 1.0)
    h.add("y", "g", {"t/a": row(5, 6, 7)}, 3.0)  # y has no t/b: t/b is x's alone
    h.close()
    got = h.rows_for("g", ("t/a", "t/b"))
    torch.testing.assert_close(got["t/a"], row(4, 5, 6))  # (1*[1,2,3] + 3*[5,6,7]) / 4
    torch.testing.assert_close(got["t/b"], row(0, 0, 4))
    assert h.weights["g"] == {"t/a": 4.0, "t/b": 1.0}
    assert h.labels_of == {"x": ("t/a", "t/b"), "y": ("t/a",)}
    # a worker only gets the labels asked for, and only those the group has
    assert set(h.rows_for("g", ("t/b", "t/zzz"))) == {"t/b"}


def test_groups_are_never_mixed() -> None:
    h = HeadSums()
    h.add("x", "g1", {"t/a": row(1, 1)}, 1.0)
    h.add("y", "g2", {"t/a": row(9, 9)}, 1.0)  # same label, other group
    h.add("z", "g2", {"u/a": row(3, 3)}, 1.0)  # other task's label
    h.close()
    torch.testing.assert_close(h.rows_for("g1", ("t/a",))["t/a"], row(1, 1))
    torch.testing.assert_close(h.rows_for("g2", ("t/a",))["t/a"], row(9, 9))
    assert set(h.rows_for("g1", None)) == {"t/a"} and set(h.rows_for("g2", None)) == {"t/a", "u/a"}


def test_groups_and_labels_without_pushes_keep_their_rows() -> None:
    h = HeadSums()
    h.add("x", "g1", {"t/a": row(1, 1), "t/b": row(2, 2)}, 1.0)
    h.add("y", "g2", {"t/a": row(9, 9)}, 1.0)
    h.close()
    h.add("x", "g1", {"t/a": row(3, 3)}, 2.0)  # next round: only g1's t/a
    h.close()
    torch.testing.assert_close(h.rows_for("g1", None)["t/a"], row(3, 3))  # fresh sums, not mixed with last round
    torch.testing.assert_close(h.rows_for("g1", None)["t/b"], row(2, 2))  # kept
    torch.testing.assert_close(h.rows_for("g2", None)["t/a"], row(9, 9))  # kept
    assert h.weights["g1"] == {"t/a": 2.0, "t/b": 1.0}
    h.close()  # a round without any push changes nothing
    torch.testing.assert_close(h.rows_for("g1", None)["t/a"], row(3, 3))


def test_robust_median_per_label() -> None:
    h = HeadSums(RobustConfig(method="median"))
    for worker, value in (("x", 1.0), ("y", 2.0), ("z", 1000.0)):
        h.add(worker, "g", {"t/a": row(value, value)}, 1.0)
    h.close()
    torch.testing.assert_close(h.rows_for("g", None)["t/a"], row(2, 2))
    assert h.weights["g"]["t/a"] == 3.0


def test_state_meta_round_trip() -> None:
    h = HeadSums()
    h.add("x", "g", {"t/a": row(1, 2), "t/b": row(3, 4)}, 2.0)
    h.close()
    other = HeadSums()
    other.load({**h.state(), "global/0/q": torch.ones(1)}, h.meta())  # foreign keys ignored
    assert other.weights == h.weights and other.labels_of == h.labels_of
    torch.testing.assert_close(other.rows_for("g", ("t/a",))["t/a"], row(1, 2))


def test_bad_group_name_and_weight() -> None:
    with pytest.raises(ValueError):
        HeadSums().add("x", "a/b", {"t/a": row(1, 1)}, 1.0)
    with pytest.raises(ValueError):
        HeadSums().add("x", "g", {"t/a": row(1, 1)}, 0.0)


# -- validation of a head blob -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "width", "words"),
    [
        ({"t/a": row(1, float("nan"))}, None, "NaN"),
        ({"t/a": row(1, float("inf"))}, None, "Inf"),
        ({"t/a": row(1, 2, 3)}, 4, "head width 4"),
        ({"t/a": row(1, 2), "t/b": row(1, 2, 3)}, None, "other rows 2"),
        ({"t/a": torch.ones(3, dtype=torch.float16)}, None, "dtype float16"),
        ({"t/a": torch.ones(3, dtype=torch.float64)}, None, "dtype float64"),
        ({"t/a": torch.ones(2, 3)}, None, "expected 1-D"),
        ({"t/a": torch.ones(())}, None, "expected 1-D"),
        ({"t/a": row(1)}, None, "length 1"),
        ({"": row(1, 2)}, None, "empty label name"),
        ({"  ": row(1, 2)}, None, "empty label name"),
        ({"x" * 2000: row(1, 2)}, None, "characters"),
        ({}, None, "no label rows"),
    ],
)
def test_validate_head_rejects(rows: dict[str, torch.Tensor], width: int | None, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_head(rows, "push of worker w round 1 head", width)
    assert words in str(info.value) and "push of worker w round 1 head" in str(info.value)


def test_validate_head_limits_label_count_and_accepts_good_rows() -> None:
    assert validate_head({"t/a": row(1, 2, 3), "t/b": row(0, 0, 0)}, "h", 3) == 3
    too_many = dict.fromkeys((f"l{i}" for i in range(MAX_HEAD_LABELS + 1)), row(1, 2))
    with pytest.raises(InvalidArgument, match="at most 100000"):
        validate_head(too_many, "h")


def test_upload_spec_and_select_with_head() -> None:
    spec = UploadSpec((0, 1, HEAD_LAYER))
    assert spec.head and spec.adapter_layers == (0, 1) and not spec.empty
    assert select(SCHEMA, spec)[HEAD_LAYER] == {} and set(select(SCHEMA, spec)) == {0, 1, HEAD_LAYER}
    head_only = UploadSpec((HEAD_LAYER,), lora_a=False, lora_b=False)
    assert not head_only.empty and select(SCHEMA, head_only) == {HEAD_LAYER: {}}
    assert UploadSpec((0,), lora_a=False, lora_b=False).empty and not UploadSpec((0,)).head


# -- strategies: who pushes and pulls a head, in which group --------------------------------------


def test_head_upload_only_in_cluster_mode_of_classification_runs() -> None:
    for run in (RunConfig(strategy="fedit"), RunConfig(strategy="fedit", train=CLUSTER, task="causal_lm")):
        s = create_strategy(run, SCHEMA)
        assert s.push_spec("w", 1) == s.upload_spec("w", 1) and not s.push_spec("w", 1).head
        s.accumulate_head("w", 1, {"t/a": row(1, 2)}, 1.0)  # ignored
        s.close_heads(1)
        assert s.head_downloads("w", 2) == [] and not any(k.startswith("head/") for k in s.checkpoint_state())
    on = create_strategy(RunConfig(strategy="fedit", train=CLUSTER), SCHEMA)
    assert on.push_spec("w", 1).layers == (0, 1, HEAD_LAYER)


@pytest.mark.parametrize("name", ["fedit", "ffa", "fedsa", "fedper", "fedalt"])
def test_fedit_family_heads_form_one_global_group(name: str) -> None:
    s = create_strategy(RunConfig(strategy=name, train=CLUSTER), SCHEMA)
    assert s.head_group("x", 1) == s.head_group("y", 5) == "global"
    assert s.push_spec("x", 1).head
    s.accumulate_head("x", 1, {"t/a": row(1, 1), "t/b": row(5, 5)}, 1.0)
    s.accumulate_head("y", 1, {"t/a": row(3, 3)}, 1.0)
    s.accumulate_head("z", 1, {"u/a": row(7, 7)}, 1.0)
    s.close_heads(1)
    # pulls of round 2 see round 1's rows
    (dl,) = s.head_downloads("y", 2)
    assert dl.layer == HEAD_LAYER and dl.role == Role.CLUSTER and set(dl.tensors) == {"t/a"}
    torch.testing.assert_close(dl.tensors["t/a"], row(2, 2))
    (dx,) = s.head_downloads("x", 2)
    assert set(dx.tensors) == {"t/a", "t/b"} and dx.share_key != dl.share_key
    (dz,) = s.head_downloads("z", 2)
    torch.testing.assert_close(dz.tensors["u/a"], row(7, 7))  # the other task's label is its own
    assert s.head_downloads("never-pushed", 2) == []


def test_local_never_uploads_a_head() -> None:
    s = create_strategy(RunConfig(strategy="local", train=CLUSTER), SCHEMA)
    assert s.head_group("x", 3) is None and s.push_spec("x", 3).empty


@pytest.mark.parametrize("name", ["fedtree", "flat", "indep"])
def test_tree_strategies_group_heads_by_deepest_cluster_after_the_build(name: str) -> None:
    run = RunConfig(strategy=name, train=CLUSTER, fedtree=FedTreeConfig(warmup_rounds=2))
    s = create_strategy(run, TREE_SCHEMA)
    assert isinstance(s, FedTree)
    assert s.head_group("w0", 1) is None and s.head_group("w0", 2) is None  # warmup, build round included
    assert not s.push_spec("w0", 1).head and not s.push_spec("w0", 2).head
    for worker in WORKERS:
        s.accumulate(worker, 2, planted(worker), 1.0)
    s.close_round(2)
    s.close_heads(2)
    assert s.head_group("w0", 2) is None and s.push_spec("w0", 3).head
    deepest = s.clusters()[-1]
    groups = {w: s.head_group(w, 3) for w in WORKERS}
    for cluster in deepest:
        assert len({groups[w] for w in cluster}) == 1
    assert len(set(groups.values())) == len(deepest)
    assert s.head_group("late-joiner", 3) is None
    # round 3: each pushes its own row of the shared label; the pull of round 4 is the cluster's mean
    for i, worker in enumerate(WORKERS):
        s.accumulate_head(worker, 3, {"t/a": row(i, i)}, 1.0)
    s.close_round(3)
    s.close_heads(3)
    for cluster in deepest:
        expected = sum(WORKERS.index(w) for w in cluster) / len(cluster)
        for worker in cluster:
            (dl,) = s.head_downloads(worker, 4)
            torch.testing.assert_close(dl.tensors["t/a"], row(expected, expected))
    # the head sums ride with the strategy's checkpoint
    again = create_strategy(run, TREE_SCHEMA)
    again.restore(s.checkpoint_state(), s.checkpoint_meta())
    assert again.clusters() == s.clusters()
    torch.testing.assert_close(again.head_downloads("w0", 4)[0].tensors["t/a"], s.head_downloads("w0", 4)[0].tensors["t/a"])


# -- the receiver: the head blob on the wire ------------------------------------------------------


def _receive(blobs: dict[int, dict[str, torch.Tensor]], expected: dict, wire: str | None = None) -> dict:
    r = UpdateReceiver(PushHeader("w", 1, "u", 1, {}), expected, 1 << 20, wire_dtype=wire)
    for layer, tensors in blobs.items():
        sent, meta = codec.to_wire(tensors, wire)
        for chunk in split(codec.encode(sent, meta), BlobKey(1, layer, Role.UPDATE), 1024):
            r.feed(chunk)
    return r.finish()


def test_receiver_checks_the_head_blob() -> None:
    expected = select(SCHEMA, UploadSpec((0, HEAD_LAYER), lora_a=False))
    b0 = {B: torch.ones(4, 2)}
    got = _receive({0: b0, HEAD_LAYER: {"t/a": row(1, 2, 3)}}, expected)
    torch.testing.assert_close(got[HEAD_LAYER]["t/a"], row(1, 2, 3))
    halved = _receive({0: b0, HEAD_LAYER: {"t/a": row(1, 2, 3)}}, expected, wire="bf16")  # float32 after arrival
    assert halved[HEAD_LAYER]["t/a"].dtype == torch.float32
    with pytest.raises(InvalidArgument, match="round 1 head: head row 't/a' contains NaN"):
        _receive({0: b0, HEAD_LAYER: {"t/a": row(1, float("nan"))}}, expected)
    with pytest.raises(InvalidArgument, match="missing the head blob"):
        _receive({0: b0}, expected)
    with pytest.raises(InvalidArgument, match="layer 65535 is not expected"):
        _receive({0: b0, HEAD_LAYER: {"t/a": row(1, 2)}}, select(SCHEMA, UploadSpec((0,), lora_a=False)))


# -- the engine: width fixed by the first head push, rejected pushes leave nothing, restarts ------


def _engine(tmp_path: Path, store: StateStore | None = None) -> RoundEngine:
    run = RunConfig(strategy="fedit", rounds=3, min_workers=2, train=CLUSTER)
    engine = RoundEngine(CoordinatorConfig(state_dir=tmp_path, run=run), store or StateStore(tmp_path))
    engine.resume()
    return engine


def _admit(engine: RoundEngine, header: PushHeader) -> PushTicket:
    admitted = engine.begin_push(header)
    assert isinstance(admitted, PushTicket), admitted
    return admitted


def _update(value: float, head: dict[str, torch.Tensor] | None) -> dict[int, dict[str, torch.Tensor]]:
    out = {layer: {A: torch.full((2, 4), value), B: torch.full((4, 2), value)} for layer in (0, 1)}
    if head is not None:
        out[HEAD_LAYER] = head
    return out


def test_engine_fixes_the_width_rejects_others_and_keeps_rows_across_a_restart(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    for w in ("x", "y"):
        engine.join(JoinRequest(w, "fp", 10, SCHEMA))
    task = engine.get_task("x", 0)
    assert task.upload is not None and task.upload.head
    assert HEAD_LAYER in _admit(engine, PushHeader("x", 1, "u", 1, {})).expected
    engine.commit(_admit(engine, PushHeader("x", 1, "x1", 1, {})), _update(1.0, {"t/a": row(1, 1, 1)}), 10)
    assert engine.head_width == 3 and engine.store.get("head_width") == 3
    with pytest.raises(InvalidArgument, match="head width 3"):
        engine.commit(_admit(engine, PushHeader("y", 1, "y1", 3, {})), _update(2.0, {"t/a": row(1, 1, 1, 1)}), 10)
    assert engine.store.pushes(1).keys() == {"x"} and engine.current is not None and "y" not in engine.current.pushed
    assert engine.strategy is not None and engine.strategy.heads.labels_of == {"x": ("t/a",)}
    engine.commit(_admit(engine, PushHeader("y", 1, "y2", 3, {})), _update(2.0, {"t/a": row(5, 5, 5)}), 10)
    assert engine.last_closed == 1
    _, items = engine.downloads("x", 2)
    (head,) = [d for d in items if d.layer == HEAD_LAYER]
    torch.testing.assert_close(head.tensors["t/a"], row(4, 4, 4))  # (1*1 + 3*5) / 4
    engine.store.close()
    again = _engine(tmp_path)
    assert again.head_width == 3 and again.last_closed == 1
    for w in ("x", "y"):
        again.join(JoinRequest(w, "fp", 10, SCHEMA))
    _, items = again.downloads("y", 2)
    torch.testing.assert_close([d for d in items if d.layer == HEAD_LAYER][0].tensors["t/a"], row(4, 4, 4))
    again.store.close()


# -- the worker's rows, by label key ---------------------------------------------------------------


def _lm(model: torch.nn.Module) -> object:
    from worker.model import LoraModel

    return LoraModel(model, None, {}, "")  # type: ignore[arg-type]


def test_rows_of_a_bert_head_read_and_write_by_label(tiny_model_dir: Path) -> None:
    from common.config import LoraConfig
    from worker.model import build_model, head_rows, head_width, load_head_rows

    keys = ("t/a", "t/b", "t/c")
    lm = build_model(tiny_model_dir, keys, LoraConfig(rank=2), seed=1, train_head=True)
    weight = dict(lm.model.named_parameters())["base_model.model.classifier.weight"]
    bias = dict(lm.model.named_parameters())["base_model.model.classifier.bias"]
    assert head_width(lm, 3) == 33
    rows = head_rows(lm, keys)
    torch.testing.assert_close(rows["t/b"], torch.cat([weight[1].detach(), bias[1:2].detach()]))
    load_head_rows(lm, keys, {"t/c": torch.arange(33, dtype=torch.float32)})
    torch.testing.assert_close(weight[2].detach(), torch.arange(32, dtype=torch.float32))
    assert float(bias[2].detach()) == 32.0
    torch.testing.assert_close(head_rows(lm, keys)["t/a"], rows["t/a"])  # others untouched
    assert torch.equal(lm.head_state()["base_model.model.classifier.weight"][2], torch.arange(32, dtype=torch.float32))
    with pytest.raises(ValueError, match="not one of"):
        load_head_rows(lm, keys, {"u/a": torch.zeros(33)})
    with pytest.raises(ValueError, match="shape"):
        load_head_rows(lm, keys, {"t/a": torch.zeros(32)})


def test_roberta_head_exchanges_only_the_output_projection() -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from worker.model import head_rows, load_head_rows

    # hidden 8 and 8 labels: dense (8 -> 8) and out_proj (8 -> 8) have the same shape
    config = RobertaConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    config.num_labels = 8
    model = RobertaForSequenceClassification(config)
    keys = tuple(f"t/{i}" for i in range(8))
    lm = _lm(model)
    dense = model.classifier.dense.weight.detach().clone()
    rows = head_rows(lm, keys)  # type: ignore[arg-type]
    torch.testing.assert_close(rows["t/3"][:-1], model.classifier.out_proj.weight[3].detach())
    load_head_rows(lm, keys, {"t/3": torch.zeros(9)})  # type: ignore[arg-type]
    out_proj = model.classifier.out_proj
    assert float(out_proj.weight[3].detach().abs().sum()) == 0.0 and float(out_proj.bias[3].detach()) == 0.0
    assert torch.equal(model.classifier.dense.weight, dense)


# -- the worker checks what it pulls --------------------------------------------------------------


def _worker_with_model(tiny_model_dir: Path, data_dir: Path, out: Path, head_mode: str) -> object:
    from common.config import DataConfig, LoraConfig, WorkerConfig
    from worker.model import build_model
    from worker.runner import Worker
    from worker.strategies import create_worker_strategy

    worker = Worker(WorkerConfig(worker_id="w", data=DataConfig(dir=data_dir), output_dir=out), client=object())  # type: ignore[arg-type]
    worker.run = RunConfig(train=TrainConfig(head_mode=head_mode), lora=LoraConfig(rank=2))  # type: ignore[arg-type]
    worker.lm = build_model(tiny_model_dir, worker.data.label_keys, worker.run.lora, 0, True)
    worker.strategy = create_worker_strategy(worker.run)
    worker.strategy.prepare(worker.lm)
    return worker


def test_worker_validates_and_loads_pulled_head_rows(tiny_model_dir: Path, client_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from worker.model import head_rows

    worker = _worker_with_model(tiny_model_dir, client_data("p0", ("sports", "tech")), tmp_path / "o", "cluster")
    assert worker.data.label_keys == ("sports", "tech")  # type: ignore[attr-defined]
    before = head_rows(worker.lm, worker.data.label_keys)  # type: ignore[attr-defined]
    bad = {
        "NaN": {Role.CLUSTER: {"sports": torch.full((33,), float("nan"))}},
        "head width 33": {Role.CLUSTER: {"sports": torch.zeros(32)}},
        "does not have": {Role.CLUSTER: {"food": torch.zeros(33)}},
        "expected cluster": {Role.EXTERNAL: {"sports": torch.zeros(33)}},
        "expected 1-D": {Role.CLUSTER: {"sports": torch.zeros(1, 33)}},
    }
    for words, roles in bad.items():
        with pytest.raises(InvalidArgument, match=words):
            worker.apply(2, {HEAD_LAYER: roles})  # type: ignore[attr-defined]
        after = head_rows(worker.lm, worker.data.label_keys)  # type: ignore[attr-defined]
        assert all(torch.equal(after[k], before[k]) for k in before), "nothing loaded from a bad pull"
    worker.apply(2, {HEAD_LAYER: {Role.CLUSTER: {"tech": torch.ones(33)}}})  # type: ignore[attr-defined]
    after = head_rows(worker.lm, worker.data.label_keys)  # type: ignore[attr-defined]
    assert torch.equal(after["tech"], torch.ones(33)) and torch.equal(after["sports"], before["sports"])
    update = worker.update_for(UploadSpec((0, HEAD_LAYER), lora_a=False))  # type: ignore[attr-defined]
    assert set(update) == {0, HEAD_LAYER} and torch.equal(update[HEAD_LAYER]["tech"], torch.ones(33))
    local = _worker_with_model(tiny_model_dir, client_data("p1", ("sports", "tech")), tmp_path / "o1", "local")
    with pytest.raises(InvalidArgument, match="head_mode is local"):
        local.apply(2, {HEAD_LAYER: {Role.CLUSTER: {"tech": torch.ones(33)}}})  # type: ignore[attr-defined]
