"""A 1 MiB save through the manager (a registered NumPy array, durable)
against TensorFlow's CheckpointManager saving the same bytes (no fsync), in
one process, alternating which goes first. Run by scripts/bench-commit when
build/tf-venv has TensorFlow (python -m venv build/tf-venv &&
build/tf-venv/bin/pip install tensorflow-cpu); prints one JSON line per
figure, as benches/commit.rs does.

    build/tf-venv/bin/python benches/tf_side_by_side.py DIRECTORY [PAIRS]
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import ckpt_manager  # noqa: E402

BYTES = 1 << 20


def line(scenario, unit, value, **extra):
    print(json.dumps({"side": "this", "scenario": scenario, "unit": unit,
                      "value": round(value, 4), **extra}, separators=(",", ":")), flush=True)


def main():
    directory = sys.argv[1]
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    array = np.arange(BYTES, dtype=np.uint8)
    manager = ckpt_manager.CheckpointManager(os.path.join(directory, "manager"), None)
    manager.register_array("weights", array)
    variable = tf.Variable(array)
    tf_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(weights=variable), os.path.join(directory, "tf"), max_to_keep=None)

    def timed(save):
        start = time.perf_counter()
        save()
        return (time.perf_counter() - start) * 1000

    saves, tf_saves = [], []
    for pair in range(5 + pairs):
        if pair % 2 == 0:
            tf_ms, ours = timed(tf_manager.save), timed(manager.save)
        else:
            ours, tf_ms = timed(manager.save), timed(tf_manager.save)
        if pair >= 5:
            saves.append(ours)
            tf_saves.append(tf_ms)
    manager.close()
    ours, theirs = statistics.median(saves), statistics.median(tf_saves)
    line("tensor_1mib_tf.save", "ms", ours, min=min(saves), max=max(saves), n=len(saves))
    line("tensor_1mib_tf.tensorflow_no_fsync", "ms", theirs,
         min=min(tf_saves), max=max(tf_saves), n=len(tf_saves))
    line("tensor_1mib_tf.ratio_save_over_tensorflow", "x", ours / theirs, of="medians")


if __name__ == "__main__":
    main()
