#!/usr/bin/env python3
"""Upload and download throughput of the library's S3 store against boto3's
transfer manager, on one S3 server on loopback, in one run (issue 13).

The same bytes on both sides: TENSORS float32 arrays of TENSOR_MIB each
(default 16 x 64 MiB = 1 GiB), views into one buffer.
  library  upload:   CheckpointManager.save() on s3://bucket/lib with the
                     arrays registered (the safetensors file uploaded from the
                     buffers, multipart, then the commit);
           download: restore_or_initialize() of a second manager whose
                     registered arrays are zeroed (ranged reads into them).
  boto3    upload:   upload_fileobj of the buffer (read from memory);
           download: download_fileobj into a zeroed buffer.
TransferConfig uses the library's nominal part size and parts in flight
(16 MiB, 8) unless --part-mib / --threads say otherwise. The two sides alternate which
goes first each round; every download is checked against the source.

Starts moto's server (from build/s3-venv, which scripts/setup fills) unless
--endpoint is given, through benches/s3_timed_server.py, which logs each
request's start and end: besides the whole save, the library's upload is
also given as its data object's alone (the tensor file's requests, from the
start of the first to the end of the last), and boto3's the same way. Run by
scripts/bench-s3 (make bench-s3), which builds the release library and runs
this with build/s3-venv/bin/python.
"""

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import numpy as np
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

import ckpt_manager

REPO = Path(__file__).resolve().parent.parent
TIMED_SERVER = REPO / "benches" / "s3_timed_server.py"
MIB = 1024 * 1024
CREDENTIALS = {"aws_region": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(log_path, deadline_seconds=60):
    """A moto server on a free loopback port logging its requests to
    `log_path`, once it answers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(TIMED_SERVER), str(port), str(log_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + deadline_seconds
    while True:
        if server.poll() is not None:
            sys.exit(f"moto_server exited with {server.returncode}")
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                sys.exit(f"moto_server did not answer on {endpoint}")
            time.sleep(0.05)


def client(endpoint, threads):
    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(max_pool_connections=max(32, threads)),
                        region_name=CREDENTIALS["aws_region"],
                        aws_access_key_id=CREDENTIALS["aws_access_key_id"],
                        aws_secret_access_key=CREDENTIALS["aws_secret_access_key"])


class MemoryReader(io.RawIOBase):
    """A seekable binary file reading a buffer, for upload_fileobj."""

    def __init__(self, buffer):
        self._view = memoryview(buffer).cast("B")
        self._at = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._at

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = base + offset
        return self._at

    def readinto(self, out):
        chunk = self._view[self._at:self._at + len(out)]
        out[:len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


class MemoryWriter(io.RawIOBase):
    """A seekable binary file writing into a preallocated buffer, for
    download_fileobj (which seeks to each part's offset)."""

    def __init__(self, buffer):
        self._view = memoryview(buffer).cast("B")
        self._at = 0

    def writable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._at

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = base + offset
        return self._at

    def write(self, data):
        size = len(data)
        self._view[self._at:self._at + size] = data
        self._at += size
        return size


def timed(action, windows=None):
    """Seconds `action` took; its wall-clock window is added to `windows`."""
    start, wall = time.perf_counter(), time.time()
    action()
    seconds = time.perf_counter() - start
    if windows is not None:
        windows.append((wall, wall + seconds))
    return seconds


def data_seconds(log_path, windows, suffix):
    """For each window, the span of the logged requests on a key ending
    in `suffix`: the data object's upload alone."""
    requests = []
    for line in Path(log_path).read_text().splitlines():
        start, end, _method, path = line.split(" ", 3)
        if path.endswith(suffix):
            requests.append((float(start), float(end)))
    spans = []
    for begin, finish in windows:
        inside = [r for r in requests if begin - 0.01 <= r[0] and r[1] <= finish + 0.01]
        spans.append(max(r[1] for r in inside) - min(r[0] for r in inside) if inside else None)
    return spans


class Library:
    """The library's side: a writer with the source arrays registered, and
    per download a fresh manager whose arrays are the zeroed targets."""
    name = "library"
    data_suffix = ".safetensors"

    def __init__(self, endpoint, bucket, source, target):
        self.url = f"s3://{bucket}/lib"
        self.options = dict(CREDENTIALS, aws_endpoint=endpoint, aws_allow_http=True)
        self.source, self.target = source, target
        self.windows = []
        # max_to_keep 1: each save's sweep deletes the previous round's object.
        self.writer = ckpt_manager.CheckpointManager(self.url, 1, storage_options=self.options)
        for i, array in enumerate(source):
            self.writer.register_array(f"tensor-{i}", array)

    def upload(self):
        return timed(self.writer.save, self.windows)

    def download(self):
        for array in self.target:
            array.fill(0)
        with ckpt_manager.CheckpointManager(self.url, 1, read_only=True,
                                            storage_options=self.options) as reader:
            for i, array in enumerate(self.target):
                reader.register_array(f"tensor-{i}", array)
            seconds = timed(reader.restore_or_initialize)
        if not all(np.array_equal(a, b) for a, b in zip(self.source, self.target)):
            sys.exit("library: the restored arrays differ from the saved ones")
        return seconds

    def close(self):
        self.writer.close()


class Boto3:
    """boto3's side: one object of the same bytes, through the transfer manager."""
    name = "boto3"
    data_suffix = "/boto3/tensors.bin"

    def __init__(self, endpoint, bucket, source_buffer, target_buffer, part_mib, threads):
        self.s3 = client(endpoint, threads)
        self.bucket, self.key = bucket, "boto3/tensors.bin"
        self.source, self.target = source_buffer, target_buffer
        self.windows = []
        self.config = TransferConfig(multipart_threshold=part_mib * MIB,
                                     multipart_chunksize=part_mib * MIB,
                                     max_concurrency=threads, use_threads=True)

    def upload(self):
        return timed(lambda: self.s3.upload_fileobj(
            MemoryReader(self.source), self.bucket, self.key, Config=self.config), self.windows)

    def download(self):
        self.target.fill(0)
        seconds = timed(lambda: self.s3.download_fileobj(
            self.bucket, self.key, MemoryWriter(self.target), Config=self.config))
        if not np.array_equal(self.source, self.target):
            sys.exit("boto3: the downloaded bytes differ from the uploaded ones")
        return seconds

    def close(self):
        pass


def run(endpoint, args, log_path=None):
    size = args.tensors * args.tensor_mib * MIB
    rng = np.random.default_rng(13)
    source = rng.standard_normal(size // 4, dtype=np.float32)
    target = np.zeros_like(source)
    per_tensor = args.tensor_mib * MIB // 4
    views = lambda buffer: [buffer[i * per_tensor:(i + 1) * per_tensor]  # noqa: E731
                            for i in range(args.tensors)]
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client(endpoint, args.threads).create_bucket(Bucket=bucket)
    sides = [Library(endpoint, bucket, views(source), views(target)),
             Boto3(endpoint, bucket, source, target, args.part_mib, args.threads)]
    run_ways = ("upload",) if args.uploads_only else ("upload", "download")
    rates = {(side.name, way): [] for side in sides for way in run_ways}
    try:
        for round_number in range(args.rounds):
            order = sides if round_number % 2 == 0 else sides[::-1]
            for side in order:
                for way in run_ways:
                    seconds = getattr(side, way)()
                    rate = size / MIB / seconds
                    rates[(side.name, way)].append(rate)
                    print(f"round {round_number} {side.name:7} {way:8}: {size / MIB:.0f} MiB "
                          f"in {seconds:6.2f} s = {rate:7.1f} MiB/s", flush=True)
    finally:
        for side in sides:
            side.close()
    ways = list(run_ways)
    if log_path:
        ways.insert(1, "upload, data object alone")
        for side in sides:
            spans = data_seconds(log_path, side.windows, side.data_suffix)
            rates[(side.name, ways[1])] = [size / MIB / s for s in spans if s]
            print(f"{side.name:7} data object alone: " + ", ".join(
                f"{size / MIB / s:.1f}" for s in spans if s) + " MiB/s")
    print(f"\n{args.rounds} rounds, {args.tensors} x {args.tensor_mib} MiB float32; boto3 parts "
          f"of {args.part_mib} MiB, {args.threads} threads; endpoint {endpoint}; medians:\n")
    print("| | library | boto3 | library / boto3 |")
    print("|---|---|---|---|")
    summary = {}
    for way in ways:
        library = statistics.median(rates[("library", way)])
        baseline = statistics.median(rates[("boto3", way)])
        summary[way] = {"library_mib_s": library, "boto3_mib_s": baseline,
                        "ratio": library / baseline}
        print(f"| {way} | {library:.1f} MiB/s | {baseline:.1f} MiB/s | "
              f"**{library / baseline:.2f}x** |")
    print("\n" + json.dumps({"rates": {f"{n} {w}": r for (n, w), r in rates.items()},
                             "medians": summary}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=16, help="arrays (default 16)")
    parser.add_argument("--tensor-mib", type=int, default=64, help="MiB per array (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--part-mib", type=int, default=16, help="boto3's part size")
    parser.add_argument("--threads", type=int, default=8, help="boto3's transfer threads")
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto")
    parser.add_argument("--uploads-only", action="store_true",
                        help="skip the downloads (a round of 1 GiB then takes seconds, not minutes)")
    args = parser.parse_args()
    if args.endpoint:
        run(args.endpoint, args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "requests.log"
        server, endpoint = start_moto(log_path)
        try:
            run(endpoint, args, log_path)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
