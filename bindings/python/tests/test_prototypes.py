"""The ctypes prototypes are generated from the header, so a change to a C
signature reaches the bindings or fails here."""
import ctypes
import re

import pytest

from ckpt_manager import _lib, _prototypes
from conftest import HEADER, assert_generated, load_generator


def header_text():
    with open(HEADER, encoding="utf-8") as f:
        return f.read()


def test_prototypes_module_is_generated_from_the_header():
    assert_generated("_prototypes.py")


def test_every_function_of_the_header_is_declared():
    declared = {name for name, _, _ in _prototypes.FUNCTIONS}
    in_header = set(re.findall(r"\b(ckpt_\w+)\(", header_text())) - {
        name for name in dir(_prototypes) if name.endswith(("_callback", "_finalizer"))}
    assert declared == in_header
    for name, restype, argtypes in _prototypes.FUNCTIONS:
        function = getattr(_lib, name)
        assert function.restype is restype and function.argtypes == list(argtypes), name


def test_fixed_width_types():
    functions = {name: (restype, argtypes) for name, restype, argtypes in _prototypes.FUNCTIONS}
    assert functions["ckpt_manager_reload"][0] is ctypes.c_uint32  # ckpt_status
    assert functions["ckpt_status_name"][1] == (ctypes.c_uint32,)
    assert _prototypes.ckpt_log_callback._argtypes_[1] is ctypes.c_uint32  # ckpt_log_level


def test_a_changed_signature_changes_the_generated_module():
    generator = load_generator()
    text = header_text()
    grown = text.replace(
        "ckpt_status ckpt_manager_reload(ckpt_manager *manager);",
        "ckpt_status ckpt_manager_reload(ckpt_manager *manager, uint64_t *out_count);")
    assert grown != text
    assert "(ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64))" in \
        generator.render_prototypes(grown)


def test_an_unknown_c_type_is_an_error():
    text = header_text().replace(
        "ckpt_status ckpt_manager_reload(ckpt_manager *manager);",
        "ckpt_status ckpt_manager_reload(ckpt_manager *manager, float scale);")
    with pytest.raises(ValueError, match="float"):
        load_generator().render_prototypes(text)
