"""Finding the library: the environment variable, the packaged copy, errors."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import LIBRARY, PYTHON_DIR, REPO


def run_python(code, cwd, env_updates, pythonpath=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CKPT_MANAGER_LIBRARY", "PYTHONPATH")}
    env.update(env_updates)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=60)


def copy_package(tmp_path):
    """The package alone, outside the repository (as pip copies it)."""
    target = tmp_path / "site"
    shutil.copytree(os.path.join(PYTHON_DIR, "ckpt_manager"), str(target / "ckpt_manager"),
                    ignore=shutil.ignore_patterns("_native", "__pycache__"))
    return target


def test_missing_library_is_a_clear_import_error(tmp_path):
    site = copy_package(tmp_path)
    result = run_python("import ckpt_manager", tmp_path, {}, str(site))
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "CKPT_MANAGER_LIBRARY" in result.stderr and "cargo build --release" in result.stderr


def test_bad_variable_is_a_clear_import_error(tmp_path):
    result = run_python("import ckpt_manager", tmp_path,
                        {"CKPT_MANAGER_LIBRARY": str(tmp_path / "nope.so")}, PYTHON_DIR)
    assert result.returncode != 0
    assert "CKPT_MANAGER_LIBRARY" in result.stderr and "does not exist" in result.stderr


def test_variable_names_the_library(tmp_path):
    site = copy_package(tmp_path)
    result = run_python("import ckpt_manager; print(ckpt_manager.library_path())", tmp_path,
                        {"CKPT_MANAGER_LIBRARY": LIBRARY}, str(site))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == LIBRARY


def test_packaged_copy_is_found(tmp_path):
    site = copy_package(tmp_path)
    native = site / "ckpt_manager" / "_native"
    native.mkdir()
    shutil.copy2(LIBRARY, str(native / "libckpt_manager.so"))
    result = run_python("import ckpt_manager; print(ckpt_manager.library_path())", tmp_path,
                        {}, str(site))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(native / "libckpt_manager.so")


def test_source_tree_finds_the_repository_build(tmp_path):
    result = run_python("import ckpt_manager; print(ckpt_manager.library_path())", tmp_path,
                        {}, PYTHON_DIR)
    assert result.returncode == 0, result.stderr
    # release before debug, whichever this tree has (make test builds only debug)
    builds = [os.path.join(REPO, "target", profile, "libckpt_manager.so")
              for profile in ("release", "debug")]
    assert result.stdout.strip() == next(path for path in builds if os.path.isfile(path))


def test_installed_package(tmp_path):
    """After `pip install ./bindings/python`: the installed package imports from
    another directory without the variable, uses its bundled library, and is
    this source (not a stale install)."""
    probe = run_python("import importlib.util as u; s = u.find_spec('ckpt_manager'); "
                       "print(s.origin if s else '')", tmp_path, {})
    origin = probe.stdout.strip()
    if not origin or os.path.dirname(origin) == os.path.join(PYTHON_DIR, "ckpt_manager"):
        pytest.skip("ckpt_manager is not installed (pip install ./bindings/python)")
    code = ("import ckpt_manager, tempfile\n"
            "d = tempfile.mkdtemp()\n"
            "with ckpt_manager.CheckpointManager(d, 1, save_fn=lambda p, n: open(p, 'w')) as m:\n"
            "    m.save(); print(m.save())\n"
            "print(ckpt_manager.library_path())\n")
    result = run_python(code, tmp_path, {})
    assert result.returncode == 0, result.stderr
    saved, library = result.stdout.split()
    assert saved.endswith("/ckpt-2")
    assert library == os.path.join(os.path.dirname(origin), "_native", "libckpt_manager.so")
    for name in sorted(os.listdir(os.path.join(PYTHON_DIR, "ckpt_manager"))):
        if name.endswith(".py"):
            with open(os.path.join(PYTHON_DIR, "ckpt_manager", name), "rb") as a, \
                    open(os.path.join(os.path.dirname(origin), name), "rb") as b:
                assert a.read() == b.read(), "installed %s is stale: reinstall" % name
