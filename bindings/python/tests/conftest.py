"""Test setup: the tests load the repository's build of the library (release,
or the profile CKPT_MANAGER_CARGO_PROFILE names: make test uses dev) through
CKPT_MANAGER_LIBRARY (building it with cargo first) and import the package
from this source tree, so they never test a stale install. Set
CKPT_MANAGER_LIBRARY yourself to test another build."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(PYTHON_DIR))
HEADER = os.path.join(REPO, "include", "ckpt_manager.h")
PROFILE = os.environ.get("CKPT_MANAGER_CARGO_PROFILE", "release")
LIBRARY = os.path.join(REPO, "target", "debug" if PROFILE == "dev" else PROFILE,
                       "libckpt_manager.so")


def _ensure_library():
    if os.environ.get("CKPT_MANAGER_LIBRARY"):
        return
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if os.path.isfile(os.path.join(REPO, "Cargo.toml")) and os.path.isfile(cargo):
        # Always run it: cargo is a no-op when the build is up to date, and a
        # stale library would test old code.
        subprocess.check_call([cargo, "build", "--profile", PROFILE, "--lib", "--quiet"],
                              cwd=REPO)
    if not os.path.isfile(LIBRARY):
        pytest.exit("libckpt_manager.so not found at %s and cargo could not build it; run "
                    "`cargo build --profile %s` in %s or set CKPT_MANAGER_LIBRARY"
                    % (LIBRARY, PROFILE, REPO), returncode=3)
    os.environ["CKPT_MANAGER_LIBRARY"] = LIBRARY


_ensure_library()
sys.path.insert(0, PYTHON_DIR)

import ckpt_manager  # noqa: E402

assert os.path.dirname(ckpt_manager.__file__) == os.path.join(PYTHON_DIR, "ckpt_manager"), \
    ckpt_manager.__file__


def load_generator():
    """bindings/python/generate_from_header.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "generate_from_header", os.path.join(PYTHON_DIR, "generate_from_header.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_generated(name):
    """ckpt_manager/<name> is what the generator makes of the header now."""
    with open(HEADER, encoding="utf-8") as f:
        fresh = load_generator().OUTPUTS[name](f.read())
    with open(os.path.join(PYTHON_DIR, "ckpt_manager", name), encoding="utf-8") as f:
        assert f.read() == fresh, (
            "ckpt_manager/%s is stale: run python3 bindings/python/generate_from_header.py" % name)


def ckpt_tool():
    """The repository's debug build of the `ckpt` tool (cargo builds it when
    stale; `cargo test --workspace` has built it before make test runs pytest)."""
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    subprocess.check_call([cargo, "build", "-p", "ckpt-cli", "--quiet"], cwd=REPO)
    return os.path.join(REPO, "target", "debug", "ckpt")


def subprocess_env():
    """The environment of a Python subprocess that imports this package and
    loads the library the tests load."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    return env


class FakeClock:
    """TF's mocked time.time()."""

    def __init__(self, now=1000.0):
        self.now = float(now)

    def __call__(self):
        return self.now


def tf_save(prefix, number):
    """Writes what a TF checkpoint consists of."""
    with open(prefix + ".index", "wb") as f:
        f.write(b"index %d" % number)
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(b"data %d" % number)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def directory(tmp_path):
    return str(tmp_path / "ckpts")
