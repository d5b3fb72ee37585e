#!/usr/bin/env python3
"""The remote tier (issue 21), in one run against one moto server:

  save blocking   save() of TENSORS x TENSOR_MIB float32 arrays to a local
                  directory, with a remote tier on the bucket and without,
                  alternating; each save starts with nothing uploading (the
                  previous round's uploads are waited for outside the timing).
  upload          the background copy of one such checkpoint to the bucket,
                  from save() returning to wait_until_finished() returning,
                  against boto3's transfer manager uploading the same bytes
                  from memory (TransferConfig of the library's part size and
                  parts in flight, as benches/s3_transfer.py uses), alternating.
  training loop   STEPS steps of STEP_MS each (a busy loop holding the GIL),
                  saving a LOOP_MIB checkpoint every SAVE_EVERY steps to local
                  + remote, against the same loop without saving and saving
                  locally only, alternating.

Run by scripts/bench-tiers (make bench-tiers), which builds the release
library and runs this with build/s3-venv/bin/python.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import s3_transfer  # noqa: E402

import ckpt_manager  # noqa: E402

MIB = 1024 * 1024


def storage_options(endpoint):
    return dict(s3_transfer.CREDENTIALS, aws_endpoint=endpoint, aws_allow_http=True)


def manager(local, remote, endpoint, arrays, max_to_keep=2):
    tiers = {}
    if remote is not None:
        tiers = {"remote_directory": remote, "remote_max_to_keep": max_to_keep}
    created = ckpt_manager.CheckpointManager(local, max_to_keep=max_to_keep,
                                             storage_options=storage_options(endpoint), **tiers)
    for index, array in enumerate(arrays):
        created.register_array(f"t{index}", array)
    return created


def save_blocking(endpoint, bucket, arrays, rounds, scratch):
    seconds = {"local only": [], "local + remote": []}
    sides = [("local only", None), ("local + remote", f"s3://{bucket}/blocking")]
    with manager(str(scratch / "a"), None, endpoint, arrays) as plain, \
            manager(str(scratch / "b"), sides[1][1], endpoint, arrays) as tiered:
        managers = {"local only": plain, "local + remote": tiered}
        for round_number in range(rounds):
            order = sides if round_number % 2 == 0 else sides[::-1]
            for name, _ in order:
                tiered.wait_until_finished()  # no upload in flight beside either save
                start = time.perf_counter()
                managers[name].save()
                seconds[name].append(time.perf_counter() - start)
        tiered.wait_until_finished()
    return seconds


def upload(endpoint, bucket, arrays, source, rounds, scratch):
    size = source.nbytes
    rates = {"background copy": [], "boto3": []}
    boto3 = s3_transfer.Boto3(endpoint, bucket, source, None, 16, 8)
    with manager(str(scratch / "c"), f"s3://{bucket}/upload", endpoint, arrays) as tiered:
        for round_number in range(rounds):
            order = ["background copy", "boto3"]
            for side in order if round_number % 2 == 0 else order[::-1]:
                if side == "boto3":
                    seconds = boto3.upload()
                else:
                    tiered.save()
                    start = time.perf_counter()
                    tiered.wait_until_finished()
                    seconds = time.perf_counter() - start
                rates[side].append(size / MIB / seconds)
    return rates


def training_loop(endpoint, bucket, arrays, steps, step_ms, save_every, scratch):
    names = ["no saving", "saving locally only", "saving to local + remote"]
    seconds = {name: [] for name in names}

    def loop(saving):
        start = time.perf_counter()
        for step in range(1, steps + 1):
            until = time.perf_counter() + step_ms / 1000
            while time.perf_counter() < until:
                pass
            if saving is not None and step % save_every == 0:
                saving.save()
        return time.perf_counter() - start

    for round_number in range(2):
        local_only = scratch / f"loop-local{round_number}"
        with manager(str(local_only), None, endpoint, arrays) as plain, \
                manager(str(scratch / f"loop{round_number}"), f"s3://{bucket}/loop{round_number}",
                        endpoint, arrays) as tiered:
            savers = dict(zip(names, [None, plain, tiered]))
            for name in names if round_number % 2 == 0 else names[::-1]:
                seconds[name].append(loop(savers[name]))
            tiered.wait_until_finished()
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=4)
    parser.add_argument("--tensor-mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--loop-mib", type=int, default=8, help="the loop's checkpoint")
    args = parser.parse_args()

    per_tensor = args.tensor_mib * MIB // 4
    source = np.random.default_rng(21).standard_normal(args.tensors * per_tensor,
                                                       dtype=np.float32)
    arrays = [source[i * per_tensor:(i + 1) * per_tensor] for i in range(args.tensors)]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server, endpoint = s3_transfer.start_moto(scratch / "requests.log")
        try:
            bucket = f"tiers-{uuid.uuid4().hex[:12]}"
            s3_transfer.client(endpoint, 8).create_bucket(Bucket=bucket)
            blocking = save_blocking(endpoint, bucket, arrays, args.rounds, scratch)
            rates = upload(endpoint, bucket, arrays, source, args.rounds, scratch)
            loop_arrays = [source[:args.loop_mib * MIB // 4]]
            loop = training_loop(endpoint, bucket, loop_arrays, args.steps, args.step_ms,
                                 args.save_every, scratch)
        finally:
            server.kill()
            server.wait()

    mib = source.nbytes / MIB
    median = statistics.median
    plain, tiered = median(blocking["local only"]), median(blocking["local + remote"])
    copy, boto3 = median(rates["background copy"]), median(rates["boto3"])
    idle, busy = min(loop["no saving"]), min(loop["saving to local + remote"])
    local_only = min(loop["saving locally only"])
    print(f"\n{mib:.0f} MiB checkpoints ({args.tensors} x {args.tensor_mib} MiB), "
          f"{args.rounds} rounds; loop of {args.steps} x {args.step_ms} ms steps saving every "
          f"{args.save_every} ({args.loop_mib} MiB); medians (the loop: the faster of 2 runs):\n")
    print("| | with a remote tier | baseline | ratio |")
    print("|---|---|---|---|")
    print(f"| save() blocks | {tiered * 1000:.1f} ms | {plain * 1000:.1f} ms (local only) | "
          f"**{tiered / plain:.2f}x** |")
    print(f"| upload | {copy:.1f} MiB/s (background copy) | {boto3:.1f} MiB/s (boto3) | "
          f"**{copy / boto3:.2f}x** |")
    print(f"| training loop | {busy:.2f} s | {idle:.2f} s (no saving) | "
          f"**{busy / idle - 1:+.1%}** |")
    print(f"| training loop | {busy:.2f} s | {local_only:.2f} s (saving locally only) | "
          f"**{busy / local_only - 1:+.1%}** |")
    print("\n" + json.dumps({"save_seconds": blocking, "upload_mib_s": rates,
                             "loop_seconds": loop}))


if __name__ == "__main__":
    main()
