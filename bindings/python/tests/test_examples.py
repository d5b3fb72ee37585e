"""The examples run, and the READMEs show exactly those files."""
import os
import re
import subprocess
import sys

import pytest

from conftest import PYTHON_DIR, REPO, subprocess_env

QUICKSTART = os.path.join(PYTHON_DIR, "examples", "quickstart.py")
KEEP_BEST = os.path.join(PYTHON_DIR, "examples", "keep_best.py")


def test_quickstart_runs(tmp_path):
    directory = tmp_path / "run"
    result = subprocess.run([sys.executable, QUICKSTART, str(directory)], cwd=str(tmp_path),
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "resumed from None at step 0"
    assert "resumed from %s at step 20" % (directory / "ckpt-2") in lines
    assert lines[-1] == "latest: %s" % (directory / "ckpt-4")
    assert sorted(os.listdir(directory)) == sorted(
        ["checkpoint", "checkpoint.lock"] + ["ckpt-%d.%s" % (n, suffix) for n in (2, 3, 4)
                                             for suffix in ("ckpt-manifest.json",
                                                            "optimizer.json", "safetensors")])


def test_keep_best_runs(tmp_path):
    directory = tmp_path / "run"
    # Its own process: it installs a SIGTERM handler and raises SIGTERM.
    result = subprocess.run([sys.executable, KEEP_BEST, str(directory)], cwd=str(tmp_path),
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Saves at steps 10..40 (val_loss 1.2, 0.2, 0.8, 1.8), then at the
    # preemption at 47 (2.5): the newest two and the best two are kept.
    assert result.stdout.splitlines() == [
        "preempted at step 47 saved ckpt-5",
        "kept ['ckpt-2', 'ckpt-3', 'ckpt-4', 'ckpt-5']",
        "best ckpt-2 step 20 {'val_loss': 0.2} {'epoch': 2}",
    ]
    assert sorted(os.listdir(directory)) == sorted(
        ["checkpoint", "checkpoint.lock"] + ["ckpt-%d.%s" % (n, suffix) for n in (2, 3, 4, 5)
                                             for suffix in ("ckpt-manifest.json",
                                                            "safetensors")])


def python_blocks(markdown):
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.S | re.M)


def _check_readme(path, example_path=QUICKSTART):
    with open(path, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    with open(example_path, encoding="utf-8") as f:
        example = f.read()
    assert example in blocks, "%s must show %s exactly" % (
        path, os.path.relpath(example_path, PYTHON_DIR))


@pytest.mark.parametrize("example", [QUICKSTART, KEEP_BEST], ids=os.path.basename)
def test_bindings_readme_shows_the_example(example):
    _check_readme(os.path.join(PYTHON_DIR, "README.md"), example)


def test_project_readme_shows_the_example():
    path = os.path.join(REPO, "README.md")
    with open(path, encoding="utf-8") as f:
        if "bindings/python" not in f.read():
            pytest.skip("README.md has no Python section yet")
    _check_readme(path)
