"""unipo/run.py: the run directory's files, completion samples, and the three loggers read back from what they wrote."""

import json
import math
import struct
import time

import pytest
import torch

from unipo.config import ConfigError, from_dict
from unipo.rollout.batch import Rollouts
from unipo.run import RunDir, check_loggers, completion_samples


def _batch(extras=None):
    return Rollouts(
        prompt_ids=torch.zeros(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1),
        completion_ids=torch.zeros(3, 4, dtype=torch.long),
        completion_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
        group_ids=torch.tensor([0, 0, 1]),
        truncated=torch.tensor([False, False, True]),
        rollout_logp=torch.zeros(3, 4),
        rows=[{"prompt": "What is 1+1?"}, {"prompt": [{"role": "user", "content": "Hi"}]}],
        texts=["2", "3", "hello"],
        loss_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
        extras=extras or {},
    )


def test_completion_samples_take_each_columns_value_at_its_completion():
    adv = torch.tensor([[1.0, 3.0, 100.0, 100.0], [0.5, 0.5, 9.0, 9.0], [-1.0, -1.0, -1.0, -3.0]])
    rows = completion_samples(
        _batch(), 3, reward=torch.tensor([1.0, 0.0, float("nan")]), advantage=adv,
        rewards={"a": torch.tensor([1.0, 2.0, 3.0])}, tag=["x", "y", "z"],
    )  # fmt: skip
    # a per-token advantage is its mean over the loss mask: (1 + 3) / 2, (0.5 + 0.5) / 2, (-1 - 1 - 1 - 3) / 4
    assert [r["advantage"] for r in rows] == [2.0, 0.5, -1.5]
    assert [r["prompt"] for r in rows] == ["What is 1+1?", "What is 1+1?", "Hi"]  # a chat prompt as its text
    assert [r["completion"] for r in rows] == ["2", "3", "hello"]
    assert [r["tokens"] for r in rows] == [3, 2, 4] and [r["truncated"] for r in rows] == [False, False, True]
    assert [r["rewards"]["a"] for r in rows] == [1.0, 2.0, 3.0] and [r["tag"] for r in rows] == ["x", "y", "z"]
    assert math.isnan(rows[2]["reward"])
    assert len(completion_samples(_batch(), 2, reward=torch.zeros(3))) == 2


def test_an_episode_sample_shows_the_messages_after_the_prompt():
    messages = [[{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "<calc>1+1</calc>"},
                 {"role": "tool", "content": "2"}, {"role": "assistant", "content": "2"}]] * 3  # fmt: skip
    rows = completion_samples(_batch({"messages": messages}), 1)
    assert rows[0]["completion"] == "[assistant] <calc>1+1</calc>\n[tool] 2\n[assistant] 2"


def test_rows_past_a_checkpoint_go_from_both_files_and_nan_is_written_as_null(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.log({"step": step, "reward/mean": float("nan") if step == 2 else step / 10})
        run.log_completions(step, [{"prompt": "p", "completion": str(step), "reward": float("inf")}])
    assert json.loads(run.metrics_path.read_text().splitlines()[1]) == {"step": 2, "reward/mean": None}
    assert run.completions()[0]["reward"] is None
    run.truncate_metrics(2)
    assert [r["step"] for r in run.rows()] == [1, 2] and [r["completion"] for r in run.completions()] == ["1", "2"]


def test_a_missing_logger_package_is_one_line_before_anything_loads(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match="log.backends: wandb needs the wandb package: pip install"):
        check_loggers(from_dict({"log": {"backends": ["tensorboard", "wandb"]}}))


def _log_three_steps(tmp_path, backend):
    cfg = from_dict({"log": {"backends": [backend], "project": "unipo-test"}, "train": {"max_steps": 3}})
    run = RunDir(tmp_path / "run")
    run.prepare(cfg)
    for step, value in ((1, 0.25), (2, 0.5), (3, 0.75)):
        run.log({"step": step, "reward/mean": value, "loss": -value, "note": "not a scalar"})
    run.log_completions(3, [{"prompt": "What is 1+1?", "completion": "2", "reward": 1.0, "advantage": 0.5}])
    run.close()
    return run


def test_tensorboard_logger_writes_the_scalars_and_the_config(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _log_three_steps(tmp_path, "tensorboard")
    events = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, -0.25), (2, -0.5), (3, -0.75)]
    texts = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}
    config = texts["config/text_summary"][0].tensor_proto.string_val[0].decode()
    assert "project: unipo-test" in config and "max_steps: 3" in config
    table = texts["completions/text_summary"][0]
    assert table.step == 3 and "| What is 1+1? | 2 | 1.0 | 0.5 |" in table.tensor_proto.string_val[0].decode()


def _wandb_records(path):
    """The records of an offline W&B run file (a LevelDB-style log: 32 KiB blocks of chunks with a 7-byte header
    after the file's 7-byte `:W&B` header), parsed with wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            return
        chunks, pos = chunks + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_logger_writes_an_offline_run_with_history_config_and_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = _log_three_steps(tmp_path, "wandb")
    (found,) = (run.path / "wandb").glob("offline-run-*/run-*.wandb")
    records = []
    for _ in range(100):  # wandb-core may still be flushing the file when finish() returns: wait for its exit record
        records = list(_wandb_records(found))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    history, config = [], {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = record.history.item  # a key with a slash is stored split (`nested_key`)
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
        if record.WhichOneof("record_type") == "run":
            config |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
    scalars = [(h["_step"], h["reward/mean"], h["loss"]) for h in history if "reward/mean" in h]
    assert scalars == [(1, 0.25, -0.25), (2, 0.5, -0.5), (3, 0.75, -0.75)]
    assert config["log"]["project"] == "unipo-test" and config["train"]["max_steps"] == 3
    (table,) = (run.path / "wandb").glob("offline-run-*/files/media/table/completions_*.table.json")
    assert json.loads(table.read_text())["data"] == [["What is 1+1?", "2", 1.0, 0.5, None, None]]


def test_mlflow_logger_writes_metrics_params_and_artifacts_to_a_file_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = _log_three_steps(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(run.path / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("unipo-test").experiment_id])
    history = client.get_metric_history(found.info.run_id, "reward/mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert found.data.params["train.max_steps"] == "3" and found.info.status == "FINISHED"
    folder = found.info.artifact_uri.removeprefix("file://")
    assert "max_steps: 3" in open(f"{folder}/config.yaml").read()
    assert json.load(open(f"{folder}/completions/step_000003.json"))[0]["completion"] == "2"
