"""examples/quickstart.py runs, and the README shows exactly that file."""
import os
import re
import subprocess
import sys

import pytest

from conftest import PYTHON_DIR, REPO

QUICKSTART = os.path.join(PYTHON_DIR, "examples", "quickstart.py")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_quickstart_runs(tmp_path):
    directory = tmp_path / "run"
    result = subprocess.run([sys.executable, QUICKSTART, str(directory)], cwd=str(tmp_path),
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "resumed from None at step 0"
    assert "resumed from %s at step 20" % (directory / "ckpt-2") in lines
    assert lines[-1] == "latest: %s" % (directory / "ckpt-4")
    assert sorted(os.listdir(directory)) == sorted(
        ["checkpoint", "checkpoint.lock"] + ["ckpt-%d.%s" % (n, suffix) for n in (2, 3, 4)
                                             for suffix in ("ckpt-manifest.json",
                                                            "optimizer.json", "safetensors")])


def python_blocks(markdown):
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.S | re.M)


def _check_readme(path):
    with open(path, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    with open(QUICKSTART, encoding="utf-8") as f:
        example = f.read()
    assert example in blocks, "%s must show examples/quickstart.py exactly" % path


def test_bindings_readme_shows_the_example():
    _check_readme(os.path.join(PYTHON_DIR, "README.md"))


def test_project_readme_shows_the_example():
    path = os.path.join(REPO, "README.md")
    with open(path, encoding="utf-8") as f:
        if "bindings/python" not in f.read():
            pytest.skip("README.md has no Python section yet")
    _check_readme(path)
