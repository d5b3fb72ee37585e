"""Build hook: bundle libckpt_manager.so into the package when possible.

`pip install ./bindings/python` runs `cargo build --release` in the
repository root (two directories up, with Cargo.toml) and copies
target/release/libckpt_manager.so to ckpt_manager/_native/; the wheel is then
platform-specific. Without cargo or the repository (pip copied the tree
elsewhere, or an sdist), it builds a pure package that loads the library named
by $CKPT_MANAGER_LIBRARY at import. Set CKPT_MANAGER_NO_CARGO=1 to skip the
cargo build and bundle nothing, or CKPT_MANAGER_CARGO_PROFILE=dev to bundle the
debug build instead (make test does, to reuse its tests' build).
"""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
LIBRARY = "libckpt_manager.so"


def _note(message):
    sys.stderr.write("ckpt_manager setup: %s\n" % message)


def build_library():
    """The path of a freshly built libckpt_manager.so, or None."""
    if os.environ.get("CKPT_MANAGER_NO_CARGO"):
        _note("CKPT_MANAGER_NO_CARGO is set: not bundling the library")
        return None
    if not os.path.isfile(os.path.join(REPO, "Cargo.toml")):
        _note("no Cargo.toml at %s (the source tree was copied out of the repository): "
              "building a pure package; set CKPT_MANAGER_LIBRARY at run time" % REPO)
        return None
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.isfile(cargo):
        _note("cargo not found: building a pure package; set CKPT_MANAGER_LIBRARY at run time")
        return None
    # make test builds the dev profile: the tree its Rust tests compiled.
    profile = os.environ.get("CKPT_MANAGER_CARGO_PROFILE", "release")
    subprocess.check_call([cargo, "build", "--profile", profile, "--lib"], cwd=REPO)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    path = os.path.join(target, "debug" if profile == "dev" else profile, LIBRARY)
    if not os.path.isfile(path):
        raise RuntimeError("cargo build succeeded but %s is missing" % path)
    return path


class BuildPy(build_py):
    def run(self):
        super().run()
        library = build_library()
        self.distribution.bundled_library = library is not None
        if library is not None:
            native = os.path.join(self.build_lib, "ckpt_manager", "_native")
            os.makedirs(native, exist_ok=True)
            shutil.copy2(library, os.path.join(native, LIBRARY))
            _note("bundled %s" % library)


class BdistWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False  # decided again in get_tag

    def get_tag(self):
        if getattr(self.distribution, "bundled_library", False):
            _, _, platform = super().get_tag()
            return "py3", "none", platform  # ctypes: any CPython 3, this platform
        return "py3", "none", "any"

    def write_wheelfile(self, *args, **kwargs):
        self.root_is_pure = not getattr(self.distribution, "bundled_library", False)
        return super().write_wheelfile(*args, **kwargs)


setup(cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
