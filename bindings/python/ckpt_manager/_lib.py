"""Finds libckpt_manager.so and declares its C prototypes (ctypes), which
_prototypes.py holds, generated from the header."""
import ctypes
import os

from . import _statuses

ENV_VAR = "CKPT_MANAGER_LIBRARY"
LIBRARY_NAME = "libckpt_manager.so"
EXPECTED_MAJOR = _statuses.HEADER_VERSION[0]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    """(description, path) in the order they are tried."""
    env = os.environ.get(ENV_VAR)
    if env:
        yield ("$%s" % ENV_VAR, env)
        return  # an explicit choice is never silently replaced
    yield ("packaged copy", os.path.join(_HERE, "_native", LIBRARY_NAME))
    # Imported from the source tree: bindings/python/ckpt_manager -> repo root.
    repo = os.path.normpath(os.path.join(_HERE, "..", "..", ".."))
    if os.path.isfile(os.path.join(repo, "Cargo.toml")):
        for profile in ("release", "debug"):
            yield ("repository build", os.path.join(repo, "target", profile, LIBRARY_NAME))


def _load():
    tried = []
    for what, path in _candidates():
        if what.startswith("$"):
            if not os.path.exists(path):
                raise ImportError(
                    "ckpt_manager: %s=%r does not exist; point it at libckpt_manager.so "
                    "(built by `cargo build --release` in the ckpt-manager repository, "
                    "in target/release/)" % (ENV_VAR, path))
        elif not os.path.exists(path):
            tried.append(path)
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as exc:
            raise ImportError("ckpt_manager: cannot load %s (%s): %s" % (path, what, exc)) from exc
    raise ImportError(
        "ckpt_manager: libckpt_manager.so not found (looked in: %s). Set %s to its path, "
        "e.g. `cargo build --release` in the ckpt-manager repository and "
        "`export %s=$PWD/target/release/libckpt_manager.so`, or reinstall the package "
        "with cargo available so that it bundles the library."
        % (", ".join(tried) or "nothing", ENV_VAR, ENV_VAR))


lib, path = _load()

# The prototypes, types and constants are generated from the header.
from ._prototypes import *  # noqa: E402,F401,F403
from ._prototypes import FUNCTIONS  # noqa: E402

for _name, _restype, _argtypes in FUNCTIONS:
    _function = getattr(lib, _name)
    _function.restype, _function.argtypes = _restype, list(_argtypes)
    globals()[_name] = _function
del _name, _restype, _argtypes, _function

version = lib.ckpt_version().decode("ascii")
try:
    _major = int(version.split(".")[0])
except ValueError:
    raise ImportError("ckpt_manager: %s reports an unreadable version %r" % (path, version))
if _major != EXPECTED_MAJOR:
    raise ImportError(
        "ckpt_manager: %s is version %s, but this package needs major version %d "
        "(header %s); use a matching library" % (
            path, version, EXPECTED_MAJOR, ".".join(map(str, _statuses.HEADER_VERSION))))
