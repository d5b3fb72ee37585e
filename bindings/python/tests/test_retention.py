"""Retention beyond TF's: the best k by a metric, every N-th number and pins,
on top of max_to_keep, as files on disk and the state file show, across
restarts."""
import json
import math
import os
import re

import pytest

import ckpt_manager
from ckpt_manager import CheckpointManager
from conftest import tf_save


def numbers_on_disk(directory):
    """The checkpoint numbers that have files in `directory`."""
    return sorted({int(m.group(1)) for name in os.listdir(directory)
                   if (m := re.match(r"ckpt-(\d+)\.", name))})


def listed(directory):
    """The numbers on the state file's list, oldest first."""
    state = ckpt_manager.get_checkpoint_state(directory)
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


def names(prefixes):
    return [os.path.basename(p) for p in prefixes]


def open_best_two(directory, clock):
    return CheckpointManager(directory, 2, keep_best=2, best_metric="loss", save_fn=tf_save,
                             clock=clock)


def test_best_k_by_a_metric_survives_reopening(directory, clock):
    # loss per checkpoint number; 2 records NaN, 3 records another metric only.
    losses = {1: 0.5, 2: math.nan, 3: None, 4: 0.3, 5: 0.9, 6: 0.4, 7: 0.8, 8: 0.3}
    with open_best_two(directory, clock) as m:
        assert m.best_checkpoint is None  # nothing recorded the metric yet
        for number, loss in losses.items():
            clock.now += 10
            m.save(metrics={"accuracy": 0.5} if loss is None else {"loss": loss})
            if number == 3:
                # 1 is the only one with a loss: kept by best-k beyond max_to_keep.
                assert listed(directory) == [1, 2, 3]
                assert names([m.best_checkpoint]) == ["ckpt-1"]
        # Newest two (7, 8) and best two by loss (8 and 4 tie at 0.3: both,
        # the newer ranks first). NaN and a missing loss never rank.
        assert names(m.checkpoints) == ["ckpt-4", "ckpt-7", "ckpt-8"]
        assert names([m.best_checkpoint]) == ["ckpt-8"]
        before = (m.best_checkpoint, m.checkpoints)
    assert numbers_on_disk(directory) == [4, 7, 8]
    assert listed(directory) == [4, 7, 8]

    with open_best_two(directory, clock) as m:
        assert (m.best_checkpoint, m.checkpoints) == before
        clock.now += 10
        m.save(metrics={"loss": 0.35})  # 9: the best two are still 8 and 4
        assert names(m.checkpoints) == ["ckpt-4", "ckpt-8", "ckpt-9"]
    assert numbers_on_disk(directory) == [4, 8, 9]


def test_best_by_max(directory, clock):
    with CheckpointManager(directory, 1, keep_best=1, best_metric="accuracy", best_mode="max",
                           save_fn=tf_save, clock=clock) as m:
        for accuracy in (0.7, 0.9, 0.8):
            clock.now += 10
            m.save(metrics={"accuracy": accuracy})
        assert names([m.best_checkpoint]) == ["ckpt-2"]
        assert names(m.checkpoints) == ["ckpt-2", "ckpt-3"]
    assert numbers_on_disk(directory) == [2, 3]


def test_keep_period(directory, clock):
    with CheckpointManager(directory, 1, keep_period=3, save_fn=tf_save, clock=clock) as m:
        for _ in range(7):
            clock.now += 10
            m.save()
    assert numbers_on_disk(directory) == [3, 6, 7]
    assert listed(directory) == [3, 6, 7]
    with CheckpointManager(directory, 1, keep_period=3, save_fn=tf_save, clock=clock) as m:
        clock.now += 10
        m.save()
    assert numbers_on_disk(directory) == [3, 6, 8]


def manifest(prefix):
    with open(prefix + ".ckpt-manifest.json", encoding="utf-8") as f:
        return json.load(f)


def test_pin_and_unpin_persist_across_reopening(directory, clock):
    with CheckpointManager(directory, 1, save_fn=tf_save, clock=clock) as m:
        first = m.save()
        m.pin(first)
        m.pin(first)  # pinning a pinned checkpoint does nothing
        m.save()
        m.save()
    assert manifest(first)["pinned"] is True
    assert numbers_on_disk(directory) == [1, 3]

    with CheckpointManager(directory, 1, save_fn=tf_save, clock=clock) as m:
        assert m.checkpoint_info(first)["pinned"] is True
        m.save()
        assert numbers_on_disk(directory) == [1, 4]
        m.unpin(first)
        assert "pinned" not in manifest(first)
        assert numbers_on_disk(directory) == [1, 4]  # unpin deletes nothing itself

    with CheckpointManager(directory, 1, save_fn=tf_save, clock=clock) as m:
        assert m.checkpoint_info(first)["pinned"] is False
        m.save()
    assert numbers_on_disk(directory) == [5]
    assert listed(directory) == [5]


def test_checkpoint_info(directory, clock):
    with CheckpointManager(directory, 2, save_fn=tf_save, clock=clock,
                           step_counter=lambda: 42) as m:
        metadata = {"epoch": 3, "tags": ["a", "b"], "nested": {"none": None, "pi": 3.25}}
        prefix = m.save(metrics={"loss": 0.25, "nan": math.nan, "up": math.inf,
                                 "down": -math.inf},
                        metadata=metadata)
        info = m.checkpoint_info(prefix)
        metrics = info.pop("metrics")
        assert math.isnan(metrics.pop("nan"))
        assert metrics == {"loss": 0.25, "up": math.inf, "down": -math.inf}
        files = info.pop("files")
        assert sorted(f["suffix"] for f in files) == [".data-00000-of-00001", ".index"]
        for f in files:
            assert f["size"] == os.path.getsize(prefix + f["suffix"])
        assert info.pop("total_size") == sum(f["size"] for f in files)
        assert info == {"prefix": prefix, "number": 1, "step": 42, "timestamp": 1000.0,
                        "metadata": metadata, "pinned": False, "managed": True,
                        "latest": True, "has_manifest": True}

        clock.now += 10
        second = m.save()  # neither metrics nor metadata
        info = m.checkpoint_info(second)
        assert (info["metrics"], info["metadata"], info["latest"]) == ({}, None, True)
        assert m.checkpoint_info(prefix)["latest"] is False
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.checkpoint_info(os.path.join(directory, "ckpt-9"))


def test_bad_inputs_raise_and_change_nothing(directory, clock):
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 2, keep_best=0, best_metric="loss")
    with pytest.raises(ckpt_manager.InvalidArgumentError, match="go together"):
        CheckpointManager(directory, 2, keep_best=2)
    with pytest.raises(ckpt_manager.InvalidArgumentError, match="go together"):
        CheckpointManager(directory, 2, best_metric="loss")
    with pytest.raises(ckpt_manager.InvalidArgumentError, match="best_mode"):
        CheckpointManager(directory, 2, keep_best=2, best_metric="loss", best_mode="median")
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 2, keep_best=2, best_metric="")
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 2, keep_best=-1, best_metric="loss")
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 2, keep_period=-3)
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 2, save_interval_seconds=-1)
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 2, save_interval_seconds=math.nan)

    with CheckpointManager(directory, 2, save_fn=tf_save, clock=clock) as m:
        with pytest.raises(ckpt_manager.InvalidArgumentError, match="keep-best|keep_best"):
            m.best_checkpoint
        with pytest.raises(TypeError, match="metadata"):
            m.save(metadata=["not", "a", "dict"])
        with pytest.raises(TypeError):
            m.save(metadata={"not JSON": {1, 2}})
        with pytest.raises(ckpt_manager.InvalidArgumentError, match="JSON"):
            m.save(metadata={"x": math.nan})
        with pytest.raises(TypeError, match="loss"):
            m.save(metrics={"loss": "0.5"})
        with pytest.raises(TypeError):
            m.save(metrics=[("loss", 0.5)])
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.save(metrics={"": 0.5})
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.save(metrics={"x" * 257: 0.5})
        assert m.save_counter == 0 and m.checkpoints == []
        first = m.save()
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.pin(os.path.join(directory, "ckpt-7"))
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.unpin(os.path.join(directory, "ckpt-7"))
        assert "pinned" not in manifest(first)
    assert os.listdir(directory) and numbers_on_disk(directory) == [1]

    with CheckpointManager(directory, 2, read_only=True) as reader:
        with pytest.raises(ckpt_manager.ReadOnlyError):
            reader.pin(first)
    assert "pinned" not in manifest(first)
