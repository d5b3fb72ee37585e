"""TensorFlow's 11 CheckpointManager test cases, through the Python API.
The FakeClock stands in for TF's mocked time.time()."""
import os

import pytest

from ckpt_manager import CheckpointManager, checkpoint_exists, get_checkpoint_state, \
    latest_checkpoint
from conftest import FakeClock, tf_save


def names(paths):
    return [os.path.basename(p) for p in paths]


def manager(directory, max_to_keep, clock=None, **kwargs):
    kwargs.setdefault("save_fn", tf_save)
    kwargs.setdefault("restore_fn", lambda prefix: None)
    return CheckpointManager(directory, max_to_keep, clock=clock, **kwargs)


def test_deletion(directory, clock):
    with manager(directory, 3, clock) as m:
        paths = []
        for _ in range(4):
            clock.now += 1
            paths.append(m.save())
        assert not checkpoint_exists(paths[0])
        assert not os.path.exists(os.path.join(directory, "ckpt-1.index"))
        assert all(checkpoint_exists(p) for p in paths[1:])
        assert names(m.checkpoints) == ["ckpt-2", "ckpt-3", "ckpt-4"]


def test_keep_all(directory):
    # The real wall clock, as in TF.
    with manager(directory, None) as m:
        first, second, third = m.save(), m.save(), m.save()
        assert all(checkpoint_exists(p) for p in (first, second, third))
        assert m.latest_checkpoint == third
        assert names(m.checkpoints) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    with manager(directory, None) as m:
        fourth = m.save()
        assert names(m.checkpoints) == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
    with manager(directory, 3) as m:
        assert names(m.checkpoints) == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
        fifth = m.save()
        assert names(m.checkpoints) == ["ckpt-3", "ckpt-4", "ckpt-5"]
    assert not checkpoint_exists(first) and not checkpoint_exists(second)
    assert all(checkpoint_exists(p) for p in (third, fourth, fifth))


def test_save_restore_state(directory):
    clock = FakeClock(3.0)
    path = lambda n: os.path.join(directory, "ckpt-%d" % n)  # noqa: E731
    first_time, second_time = 10000.0, 10000.0 + 3610.0
    with manager(directory, 2, clock) as m:
        clock.now = first_time
        m.save()
        clock.now = second_time
        m.save()
        state = get_checkpoint_state(directory)
        assert state.all_model_checkpoint_timestamps == [first_time, second_time]
        assert names(m.checkpoints) == ["ckpt-1", "ckpt-2"]
        assert m.latest_checkpoint == path(2)

    with manager(directory, 2, clock, keep_checkpoint_every_n_hours=1.5) as m:
        assert names(m.checkpoints) == ["ckpt-1", "ckpt-2"]
        assert m.latest_checkpoint == path(2)
        third_time = second_time + 3600.0 * 0.2
        clock.now = third_time
        m.save()
        assert checkpoint_exists(path(1)) and checkpoint_exists(path(2))
        assert names(m.checkpoints) == ["ckpt-2", "ckpt-3"]
        assert get_checkpoint_state(directory).last_preserved_timestamp == first_time
        fourth_time = third_time + 3600.0 * 0.5
        clock.now = fourth_time
        m.save()
        assert checkpoint_exists(path(1)) and not checkpoint_exists(path(2))
        assert names(m.checkpoints) == ["ckpt-3", "ckpt-4"]
        clock.now = fourth_time + 3600.0 * 0.5
        m.save()
        assert names(m.checkpoints) == ["ckpt-4", "ckpt-5"]
        assert get_checkpoint_state(directory).last_preserved_timestamp == first_time

    with manager(directory, 2, clock, keep_checkpoint_every_n_hours=1.5) as m:
        assert m.latest_checkpoint == path(5)
        clock.now += 10.0
        m.save()
        assert get_checkpoint_state(directory).last_preserved_timestamp == fourth_time
        for n in (1, 4, 5, 6):
            assert checkpoint_exists(path(n))
        for n in (2, 3):
            assert not checkpoint_exists(path(n))
        assert names(m.checkpoints) == ["ckpt-5", "ckpt-6"]
    with open(os.path.join(directory, "checkpoint")) as f:
        assert f.read() == ('model_checkpoint_path: "ckpt-6"\n'
                            'all_model_checkpoint_paths: "ckpt-5"\n'
                            'all_model_checkpoint_paths: "ckpt-6"\n'
                            'all_model_checkpoint_timestamps: 17930.0\n'
                            'all_model_checkpoint_timestamps: 17940.0\n'
                            'last_preserved_timestamp: 16130.0\n')


def test_continue_from_unmanaged(directory, clock):
    os.makedirs(directory)
    unusual_1 = os.path.join(directory, "unusual_prefix-1")
    unusual_2 = os.path.join(directory, "unusual_prefix-2")
    tf_save(unusual_1, 1)
    tf_save(unusual_2, 2)
    with open(os.path.join(directory, "checkpoint"), "w") as f:  # tf.train.Checkpoint.save
        f.write('model_checkpoint_path: "unusual_prefix-2"\n'
                'all_model_checkpoint_paths: "unusual_prefix-2"\n')
    restored = []
    with manager(directory, 2, clock, restore_fn=restored.append) as m:
        assert m.latest_checkpoint == unusual_2
        assert m.restore_or_initialize() == unusual_2
        assert restored == [unusual_2]
        assert m.save_counter == 2
        clock.now += 1
        third = m.save()
        assert os.path.basename(third) == "ckpt-3"
        assert names(m.checkpoints) == ["ckpt-3"]
        clock.now += 1
        fourth = m.save()
        assert names(m.checkpoints) == ["ckpt-3", "ckpt-4"]
        clock.now += 1
        fifth = m.save()
        assert names(m.checkpoints) == ["ckpt-4", "ckpt-5"]
    assert checkpoint_exists(unusual_1) and checkpoint_exists(unusual_2)
    assert not checkpoint_exists(third)
    assert checkpoint_exists(fourth) and checkpoint_exists(fifth)


def test_clock_reset(directory):
    clock = FakeClock(10000.0)
    warnings = []
    log = lambda level, message: warnings.append(message)  # noqa: E731
    with manager(directory, 1, clock, keep_checkpoint_every_n_hours=1.0, log_fn=log) as m:
        first = m.save()
        clock.now += 3600.0
        second = m.save()
        clock.now += 3600.0
        third = m.save()
        assert not checkpoint_exists(first)
        assert checkpoint_exists(second) and checkpoint_exists(third)
        assert names(m.checkpoints) == ["ckpt-3"]
        assert get_checkpoint_state(directory).last_preserved_timestamp == 13600.0
    assert warnings == []

    clock.now = 5000.0
    with manager(directory, 1, clock, keep_checkpoint_every_n_hours=0, log_fn=log) as m:
        assert len(warnings) == 1 and "clock" in warnings[0]
        assert checkpoint_exists(second)
        assert m.latest_checkpoint == third
        assert m.checkpoints == []
        clock.now += 10.0
        fourth = m.save()
        assert checkpoint_exists(second) and checkpoint_exists(third)
        assert m.latest_checkpoint == fourth
        assert names(m.checkpoints) == ["ckpt-4"]
        clock.now += 10.0
        m.save()
        assert checkpoint_exists(second) and checkpoint_exists(third)
        assert names(m.checkpoints) == ["ckpt-5"]
        state = get_checkpoint_state(directory)
        assert state.last_preserved_timestamp == 5000.0
        assert state.all_model_checkpoint_timestamps == [5020.0]


def test_custom_numbering(directory, clock):
    with manager(directory, 2, clock) as m:
        for number in range(0, 10, 2):
            clock.now += 1
            path = m.save(checkpoint_number=number)
            assert os.path.basename(path) == "ckpt-%d" % number
        assert m.save_counter == 5
        clock.now += 1
        last = m.save(checkpoint_number=32)
        assert os.path.basename(last) == "ckpt-32"
        assert m.save_counter == 6
        assert m.latest_checkpoint == last
        assert latest_checkpoint(directory) == last
        assert get_checkpoint_state(directory).all_model_checkpoint_paths == [path, last]


def test_custom_checkpoint_prefix(directory, clock):
    with manager(directory, 2, clock, checkpoint_name="ckpt_name") as m:
        assert os.path.basename(m.save(checkpoint_number=5)) == "ckpt_name-5"
    with manager(directory, 2, clock) as m:
        assert os.path.basename(m.save(checkpoint_number=5)) == "ckpt-5"
    assert os.path.exists(os.path.join(directory, "ckpt_name-5.index"))
    assert os.path.exists(os.path.join(directory, "ckpt-5.index"))


def test_restore_or_initialize(tmp_path, clock):
    model = {"value": 1.0}
    calls = []

    def init_fn():
        calls.append("init")
        model["value"] = 2.0

    def save_fn(prefix, number):
        with open(prefix + ".model", "w") as f:
            f.write(repr(model["value"]))

    def restore_fn(prefix):
        calls.append("restore")
        with open(prefix + ".model") as f:
            model["value"] = float(f.read())

    with CheckpointManager(str(tmp_path / "ckpt"), None, init_fn=init_fn, save_fn=save_fn,
                           restore_fn=restore_fn, clock=clock) as m:
        assert m.restore_or_initialize() is None
        assert calls == ["init"] and model["value"] == 2.0
        saved = m.save()
        model["value"] = 7.0
        assert m.restore_or_initialize() == saved
        assert calls == ["init", "restore"] and model["value"] == 2.0


class Step:
    """A stand-in for a tf.Variable step counter (has .numpy())."""

    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value


def interval_manager(directory, step, clock, **kwargs):
    saves = []

    def save_fn(prefix, number):
        saves.append(prefix)
        tf_save(prefix, number)

    m = CheckpointManager(directory, None, step_counter=step, checkpoint_interval=2,
                          save_fn=save_fn, restore_fn=lambda prefix: None, clock=clock,
                          **kwargs)
    return m, saves


def check_saved(prefix):
    assert prefix is not None and checkpoint_exists(prefix)


def test_checkpoint_interval(directory, clock):
    step = Step(0)
    m, saves = interval_manager(directory, step, clock)
    with m:
        assert m.checkpoint_interval == 2
        check_saved(m.save())
        step.value = 1
        assert m.save() is None
        step.value = 2
        check_saved(m.save())
        assert m.save() is None
        assert m.save(check_interval=False) is None
        step.value = 3
        assert m.save() is None
        check_saved(m.save(check_interval=False))
    assert len(saves) == 3


def test_checkpoint_interval_with_last_checkpoint_step(directory, clock):
    step = [1]
    m, _ = interval_manager(directory, lambda: step[0], clock, last_checkpoint_step=1)
    with m:
        assert m.save() is None
        step[0] = 2
        assert m.save() is None
        step[0] = 3
        check_saved(m.save())


def test_checkpoint_interval_with_restore(directory, clock):
    step = Step(1)
    m, _ = interval_manager(directory, step, clock)
    with m:
        check_saved(m.save(check_interval=False))
        step.value = 2
        check_saved(m.save(check_interval=False))
    m, _ = interval_manager(directory, step, clock)
    with m:
        assert os.path.basename(m.restore_or_initialize()) == "ckpt-2"
        assert m.save() is None
        step.value = 4
        check_saved(m.save())


@pytest.mark.parametrize("bad", [0, -1])
def test_max_to_keep_must_be_positive(directory, bad):
    with pytest.raises(ValueError):
        CheckpointManager(directory, bad, save_fn=tf_save)


def test_interval_needs_step_counter(directory):
    with pytest.raises(ValueError):
        CheckpointManager(directory, 2, checkpoint_interval=2, save_fn=tf_save)
