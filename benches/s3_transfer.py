#!/usr/bin/env python3
"""Upload and download throughput of boto3's transfer manager against an S3
server on loopback: the baseline the library's S3 store is compared with
(issue 13). Starts moto_server (build/s3-venv, from scripts/setup) unless
--endpoint is given. Run with build/s3-venv/bin/python.

    build/s3-venv/bin/python benches/s3_transfer.py --size-mib 1024
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
MOTO_SERVER = REPO / "build" / "s3-venv" / "bin" / "moto_server"
MIB = 1024 * 1024


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(deadline_seconds=60):
    """A moto server on a free loopback port, once it answers."""
    port = free_port()
    server = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
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


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=32),
    )


def timed(label, size, action):
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    print(f"boto3 {label}: {size / MIB:.0f} MiB in {seconds:.2f} s = {size / MIB / seconds:.1f} MiB/s")
    return seconds


def run(endpoint, args):
    s3 = client(endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    config = TransferConfig(
        multipart_threshold=args.part_mib * MIB,
        multipart_chunksize=args.part_mib * MIB,
        max_concurrency=args.threads,
        use_threads=True,
    )
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        source = Path(scratch) / "tensors.bin"
        with open(source, "wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MIB))
        target = Path(scratch) / "restored.bin"
        key = "run/ckpt-1/tensors.bin"
        timed("upload", size, lambda: s3.upload_file(str(source), bucket, key, Config=config))
        timed("download", size, lambda: s3.download_file(bucket, key, str(target), Config=config))
        if os.path.getsize(target) != size:
            sys.exit("the downloaded object has the wrong size")
    print(f"(parts of {args.part_mib} MiB, {args.threads} threads, endpoint {endpoint})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="object size (default 1 GiB)")
    parser.add_argument("--part-mib", type=int, default=8, help="multipart part size")
    parser.add_argument("--threads", type=int, default=10, help="transfer threads")
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto")
    parser.add_argument("--scratch", help="where the local file is written (default: temp dir)")
    args = parser.parse_args()
    if args.endpoint:
        run(args.endpoint, args)
        return
    server, endpoint = start_moto()
    try:
        run(endpoint, args)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
