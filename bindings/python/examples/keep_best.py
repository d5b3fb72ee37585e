"""ckpt_manager: keep the best checkpoints by a validation metric next to the
newest ones, record metrics and metadata, and save when preempted."""
import os
import signal
import sys
import tempfile

import numpy as np

import ckpt_manager

directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
weights = np.zeros(4, dtype=np.float32)
step = 0

# SIGTERM (the scheduler's preemption notice) no longer ends the process: the
# next save goes ahead whatever the interval says, then the loop stops.
ckpt_manager.install_preemption_handler(signal.SIGTERM)

with ckpt_manager.CheckpointManager(
    directory,
    max_to_keep=2,  # the newest two...
    keep_best=2,  # ...and the best two...
    best_metric="val_loss",  # ...by validation loss...
    best_mode="min",  # ...smaller is better
    step_counter=lambda: step,
    checkpoint_interval=10,
    last_checkpoint_step=0,
) as manager:
    manager.register_array("weights", weights)
    while True:
        step += 1
        weights += 0.5
        val_loss = abs(step - 22) / 10  # the model is best at step 22
        if step == 47:
            signal.raise_signal(signal.SIGTERM)  # as the scheduler would
        saved = manager.save(metrics={"val_loss": val_loss}, metadata={"epoch": step // 10})
        if ckpt_manager.preemption_requested():
            print("preempted at step", step, "saved", os.path.basename(saved))
            break
    print("kept", [os.path.basename(p) for p in manager.checkpoints])
    best = manager.best_checkpoint
    info = manager.checkpoint_info(best)
    print("best", os.path.basename(best), "step", info["step"], info["metrics"],
          info["metadata"])
