"""ckpt_manager quick start: save every few steps, resume after a restart."""
import json
import sys
import tempfile

import numpy as np

import ckpt_manager

directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()

# The model: NumPy arrays, saved by the built-in saver (zero copy), plus
# optimizer state that our own callbacks write next to them.
weights = np.zeros((4, 3), dtype=np.float32)
step = np.zeros((), dtype=np.int64)
optimizer = {"lr": 0.1}


def save_optimizer(prefix, checkpoint_number):
    # Every file of a checkpoint is named `prefix` or `prefix.<suffix>`.
    with open(prefix + ".optimizer.json", "w") as f:
        json.dump(optimizer, f)


def restore_optimizer(prefix):
    with open(prefix + ".optimizer.json") as f:
        optimizer.update(json.load(f))


def train(steps):
    with ckpt_manager.CheckpointManager(
        directory,
        max_to_keep=3,
        step_counter=lambda: int(step),
        checkpoint_interval=10,  # save at most every 10 steps...
        last_checkpoint_step=0,  # ...counted from step 0
        save_fn=save_optimizer,
        restore_fn=restore_optimizer,
    ) as manager:
        manager.register_array("weights", weights)
        manager.register_array("step", step)
        restored = manager.restore_or_initialize()
        print("resumed from", restored, "at step", int(step))
        while step < steps:
            step[...] += 1
            weights[...] += 0.5
            optimizer["lr"] *= 0.99
            saved = manager.save()  # None when the interval skips it
            if saved:
                print("step", int(step), "saved", saved)
        print("kept", manager.checkpoints)


train(25)  # a first run, stopped at step 25 (its last save was at step 20)
weights[...] = -1.0  # the next run starts with a fresh process state...
step[...] = 0
train(40)  # ...and resumes from step 20
assert int(step) == 40 and weights[0, 0] == 20.0, (int(step), weights[0, 0])
print("latest:", ckpt_manager.latest_checkpoint(directory))
