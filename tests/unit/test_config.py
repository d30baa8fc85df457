"""Unit tests for common.config: frozen models, YAML files, FEDTREE_* env overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from common.chunking import DEFAULT_CHUNK_SIZE
from common.config import (
    COORDINATOR_ENV_PREFIX,
    WORKER_ENV_PREFIX,
    CoordinatorConfig,
    LoraConfig,
    RunConfig,
    WorkerConfig,
    load_config,
)
from common.errors import ConfigError, FedtreeError


def coord(environ: dict[str, str] | None = None, path: Path | None = None, **kwargs: object) -> CoordinatorConfig:
    return load_config(
        CoordinatorConfig,
        path=path,
        env_prefix=COORDINATOR_ENV_PREFIX,
        environ=environ or {},
        **kwargs,  # type: ignore[arg-type]
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedtree.yaml"
    path.write_text(text)
    return path


# -- defaults -----------------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    cfg = coord()
    assert cfg == CoordinatorConfig()
    assert cfg.host == "0.0.0.0"
    assert cfg.port == 50051
    assert cfg.state_dir == Path("fedtree-state")
    assert cfg.expected_fingerprint is None
    assert cfg.max_blob_bytes == 256 << 20
    run = cfg.run
    assert (run.strategy, run.rounds, run.seed, run.min_workers, run.quorum) == ("fedit", 5, 0, 1, None)
    assert run.round_deadline_s == 1800.0
    assert run.chunk_size == DEFAULT_CHUNK_SIZE == 1 << 20
    assert (run.lora.rank, run.lora.alpha, run.lora.dropout, run.lora.target_modules) == (8, 16.0, 0.0, ("query", "value"))
    assert (run.train.local_epochs, run.train.batch_size, run.train.max_seq_length) == (2, 16, 128)


def test_worker_defaults_are_valid() -> None:
    cfg = load_config(WorkerConfig, env_prefix=WORKER_ENV_PREFIX, environ={})
    assert cfg.coordinator == "localhost:50051"
    assert cfg.worker_id  # the host name
    assert cfg.data.text_field == "text" and cfg.data.labels is None


# -- YAML file ----------------------------------------------------------------------------------


def test_yaml_file_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
state_dir: {tmp_path / "state"}
port: 0
run:
  rounds: 3
  quorum: 2
  lora:
    rank: 4
    target_modules: [query, key, value]
  train:
    learning_rate: 0.001
""",
    )
    cfg = coord(path=path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.port == 0
    assert cfg.run.rounds == 3
    assert cfg.run.quorum == 2
    assert cfg.run.lora.rank == 4
    assert cfg.run.lora.alpha == 16.0  # untouched nested defaults survive
    assert cfg.run.lora.target_modules == ("query", "key", "value")
    assert cfg.run.train.learning_rate == 0.001
    assert cfg.run.train.batch_size == 16


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert coord(path=write(tmp_path, "")) == CoordinatorConfig()


def test_yaml_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping, got list"):
        coord(path=write(tmp_path, "- a\n- b\n"))


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        coord(path=tmp_path / "nope.yaml")


def test_malformed_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        coord(path=write(tmp_path, "run: {rounds: [1, 2\n"))


# -- unknown keys and invalid values ------------------------------------------------------------


def test_unknown_top_level_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prot: 1234\n")
    with pytest.raises(ConfigError) as info:
        coord(path=path)
    msg = str(info.value)
    assert "unknown config key 'prot'" in msg
    assert str(path) in msg


def test_unknown_nested_key_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        coord(path=write(tmp_path, "run: {lora: {rnak: 4}}\n"))
    assert "unknown config key 'run.lora.rnak'" in str(info.value)


def test_unknown_nested_key_in_overrides() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'run\.lora\.rnak'"):
        coord(overrides={"run": {"lora": {"rnak": 4}}})


def test_several_problems_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        coord(path=write(tmp_path, "bogus: 1\nrun: {rounds: 0, train: {batch_sise: 2}}\n"))
    msg = str(info.value)
    assert "unknown config key 'bogus'" in msg
    assert "unknown config key 'run.train.batch_sise'" in msg
    assert "'run.rounds'" in msg


def test_invalid_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        coord(path=write(tmp_path, "run: {rounds: 0}\n"))
    msg = str(info.value)
    assert msg.startswith("invalid CoordinatorConfig in ")
    assert "'run.rounds'" in msg
    assert "greater than or equal to 1" in msg


def test_invalid_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'run\.lora\.rank': Input should be a valid integer"):
        coord(overrides={"run": {"lora": {"rank": "eight"}}})


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"run": {"chunk_size": 1023}}, "run.chunk_size"),
        ({"run": {"lora": {"dropout": 1.0}}}, "run.lora.dropout"),
        ({"run": {"lora": {"target_modules": []}}}, "run.lora.target_modules"),
        ({"port": 65536}, "port"),
        ({"run": {"round_deadline_s": 0}}, "run.round_deadline_s"),
    ],
)
def test_out_of_range_values(override: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        coord(overrides=override)
    assert f"'{key}'" in str(info.value)


def test_config_error_is_a_fedtree_error() -> None:
    import grpc

    assert issubclass(ConfigError, FedtreeError)
    assert ConfigError.code == grpc.StatusCode.INVALID_ARGUMENT


# -- environment overrides ----------------------------------------------------------------------


def test_env_override_scalar() -> None:
    cfg = coord({"FEDTREE_COORDINATOR__RUN__ROUNDS": "3"})
    assert cfg.run.rounds == 3
    assert cfg.run.min_workers == 1


def test_env_override_list() -> None:
    cfg = coord({"FEDTREE_COORDINATOR__RUN__LORA__TARGET_MODULES": "[query, key]"})
    assert cfg.run.lora.target_modules == ("query", "key")
    assert cfg.run.lora.rank == 8


def test_env_overrides_file_and_explicit_overrides_win(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 1\nrun: {rounds: 3, seed: 9, lora: {rank: 2}}\n")
    cfg = coord(
        {"FEDTREE_COORDINATOR__RUN__ROUNDS": "7", "FEDTREE_COORDINATOR__PORT": "2"},
        path=path,
        overrides={"port": 3},
    )
    assert cfg.run.rounds == 7  # env beats file
    assert cfg.run.seed == 9  # file value not touched by env survives the merge
    assert cfg.run.lora.rank == 2
    assert cfg.port == 3  # explicit override beats env


def test_env_keys_are_case_insensitive_after_prefix() -> None:
    assert coord({"FEDTREE_COORDINATOR__run__Rounds": "4"}).run.rounds == 4


def test_env_empty_value_means_none() -> None:
    cfg = coord({"FEDTREE_COORDINATOR__RUN__QUORUM": ""}, overrides=None)
    assert cfg.run.quorum is None
    assert coord({"FEDTREE_COORDINATOR__RUN__QUORUM": "2"}).run.quorum == 2


def test_env_other_prefixes_are_ignored() -> None:
    cfg = coord({"FEDTREE_WORKER__BOGUS": "1", "FEDTREE_COORDINATORX": "1", "ROUNDS": "9", "FEDTREE_RUN__ROUNDS": "9"})
    assert cfg == CoordinatorConfig()


def test_unknown_env_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        coord({"FEDTREE_COORDINATOR__BOGUS": "1"})
    msg = str(info.value)
    assert "unknown config key 'bogus'" in msg


def test_unknown_nested_env_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'run\.lora\.rnak'"):
        coord({"FEDTREE_COORDINATOR__RUN__LORA__RNAK": "4"})


def test_invalid_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'run\.rounds'"):
        coord({"FEDTREE_COORDINATOR__RUN__ROUNDS": "0"})


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDTREE_COORDINATOR__RUN__SEED", "11")
    cfg = load_config(CoordinatorConfig, env_prefix=COORDINATOR_ENV_PREFIX)
    assert cfg.run.seed == 11


def test_no_env_prefix_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDTREE_COORDINATOR__RUN__SEED", "11")
    assert load_config(CoordinatorConfig).run.seed == 0


def test_worker_env_override() -> None:
    cfg = load_config(
        WorkerConfig,
        env_prefix=WORKER_ENV_PREFIX,
        environ={"FEDTREE_WORKER__WORKER_ID": "w-a", "FEDTREE_WORKER__DATA__LABELS": "[neg, pos]"},
    )
    assert cfg.worker_id == "w-a"
    assert cfg.data.labels == ("neg", "pos")


def test_numeric_looking_env_value_for_string_field() -> None:
    cfg = load_config(WorkerConfig, env_prefix=WORKER_ENV_PREFIX, environ={"FEDTREE_WORKER__WORKER_ID": "42"})
    assert cfg.worker_id == "42"


def test_env_scalar_and_nested_key_clash_is_config_error() -> None:
    with pytest.raises(ConfigError):
        coord({"FEDTREE_COORDINATOR__RUN": "3", "FEDTREE_COORDINATOR__RUN__ROUNDS": "3"})


# -- frozen models ------------------------------------------------------------------------------


def test_models_are_frozen() -> None:
    cfg = coord()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.run.rounds = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.run.lora.rank = 3  # type: ignore[misc]
    assert cfg.port == 50051 and cfg.run.rounds == 5 and cfg.run.lora.rank == 8


def test_models_are_hashable_and_compare_by_value() -> None:
    assert RunConfig(rounds=3) == RunConfig(rounds=3)
    assert hash(LoraConfig(rank=4)) == hash(LoraConfig(rank=4))
    assert RunConfig(rounds=3) != RunConfig(rounds=4)


def test_direct_construction_rejects_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError, match="rnak"):
        LoraConfig(rnak=4)  # type: ignore[call-arg]
