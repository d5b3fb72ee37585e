#!/usr/bin/env python3
"""Generate the package's view of the C header, include/ckpt_manager.h:

  ckpt_manager/_statuses.py    the ckpt_status and ckpt_dtype tables and the
                               header's version
  ckpt_manager/_prototypes.py  the ctypes prototypes: every function, callback
                               type, struct and integer constant

Usage: python3 generate_from_header.py [HEADER]
  HEADER defaults to ../../include/ckpt_manager.h (relative to this script).

tests/test_errors.py and tests/test_prototypes.py regenerate the text and fail
if a checked-in file differs, so the bindings cannot drift from the header.
A C type the generator does not know is an error, not a guess.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_HEADER = os.path.join(HERE, "..", "..", "include", "ckpt_manager.h")
PACKAGE = os.path.join(HERE, "ckpt_manager")

_BANNER = [
    "# Generated from include/ckpt_manager.h by generate_from_header.py; do not edit.",
    "# Regenerate with: python3 bindings/python/generate_from_header.py",
    "",
]
_MEMBER = r"^\s*%s_(?P<name>[A-Z0-9_]+)\s*=\s*(?P<value>\d+)\s*,?\s*$"
_VERSION = re.compile(r"^#define\s+CKPT_VERSION_(MAJOR|MINOR|PATCH)\s+(\d+)\s*$", re.M)


def parse_enum(header_text, type_name, prefix):
    """[(name without prefix, value, doc comment)] of `enum <type_name> {...};`
    (a fixed-width enum: cbindgen wraps its `: uint32_t` in #if lines)."""
    enum = re.compile(r"^enum\s+%s\b[^{;]*\{(?P<body>[^}]*)\};" % type_name, re.S | re.M)
    member_re = re.compile(_MEMBER % prefix)
    match = enum.search(header_text)
    if match is None:
        raise ValueError("no `enum %s { ... };` in the header" % type_name)
    members, doc = [], []
    for line in match.group("body").splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            doc.append(stripped[2:].strip())
            continue
        member = member_re.match(line)
        if member:
            members.append((member.group("name"), int(member.group("value")), " ".join(doc)))
            doc = []
        elif stripped:
            raise ValueError("unexpected line in %s: %r" % (type_name, line))
    if not members:
        raise ValueError("%s has no members" % type_name)
    return members


def parse(header_text):
    """(statuses, dtypes, {MAJOR: n, ...}) from the header text."""
    statuses = parse_enum(header_text, "ckpt_status", "CKPT_STATUS")
    dtypes = parse_enum(header_text, "ckpt_dtype", "CKPT_DTYPE")
    versions = {k: int(v) for k, v in _VERSION.findall(header_text)}
    return statuses, dtypes, versions


def render(header_text):
    """The text of _statuses.py."""
    statuses, dtypes, versions = parse(header_text)
    out = _BANNER + [
        "HEADER_VERSION = (%d, %d, %d)" % (
            versions.get("MAJOR", 0), versions.get("MINOR", 0), versions.get("PATCH", 0)),
        "",
        "# (name without the CKPT_STATUS_ prefix, value, the header's comment)",
        "STATUSES = (",
    ]
    for name, value, doc in statuses:
        out.append("    (%r, %d, %r)," % (name, value, doc))
    out.append(")")
    out.append("")
    for name, value, _ in statuses:
        out.append("%s = %d" % (name, value))
    out.append("")
    out.append("# ckpt_dtype: safetensors dtype name -> value")
    out.append("DTYPES = {")
    for name, value, _ in dtypes:
        out.append("    %r: %d," % (name, value))
    out.append("}")
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------ prototypes

_SCALARS = {
    "bool": "ctypes.c_bool",
    "double": "ctypes.c_double",
    "size_t": "ctypes.c_size_t",
    "int32_t": "ctypes.c_int32",
    "uint32_t": "ctypes.c_uint32",
    "int64_t": "ctypes.c_int64",
    "uint64_t": "ctypes.c_uint64",
}


def _strip_comments(text):
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _declarations(header_text):
    """The header's top-level declarations, one string each, comments and
    preprocessor lines removed."""
    lines = [line for line in _strip_comments(header_text).splitlines()
             if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace('extern "C" {', "")
    declarations, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == ";" and depth == 0:
            declarations.append(" ".join(text[start:i].split()))
            start = i + 1
    return [d.lstrip("} ") for d in declarations if d.strip("} ")]


class _Types:
    """What each C type name in the header is."""

    def __init__(self, declarations):
        self.integers, self.opaque, self.structs, self.callbacks = {}, set(), {}, {}
        for d in declarations:
            if m := re.fullmatch(r"typedef (\w+) (\w+)", d):
                self.integers[m.group(2)] = m.group(1)  # typedef uint32_t ckpt_status
            elif m := re.fullmatch(r"typedef struct (\w+) (\w+)", d):
                self.opaque.add(m.group(2))
            elif m := re.fullmatch(r"typedef struct \{ (.*) \} (\w+)", d):
                self.structs[m.group(2)] = m.group(1)
            elif m := re.fullmatch(r"typedef (.+?) ?\(\*(\w+)\)\((.*)\)", d):
                self.callbacks[m.group(2)] = (m.group(1), m.group(3))

    def ctype(self, c_type, where):
        """The ctypes expression for `c_type` as an argument ("arg"), a result
        ("ret"), a callback's argument ("callback") or a struct field."""
        const = c_type.startswith("const ")
        base = c_type.replace("const ", "").replace("*", "").strip()
        depth = c_type.count("*")
        base = self.integers.get(base, base)
        if base == "char" and depth == 1:
            # Strings the caller passes in and results the library keeps are
            # bytes; a string a callback receives or the caller frees stays an
            # address, so that ctypes neither copies nor decodes it behind our
            # back.
            if (const and where == "arg") or where == "ret":
                return "ctypes.c_char_p"
            return "ctypes.c_void_p"
        if base == "char" and depth == 2:
            return "ctypes.POINTER(ctypes.c_void_p)"
        if base == "void" or base in self.opaque:
            inner, depth = ("None" if depth == 0 else "ctypes.c_void_p"), max(depth - 1, 0)
        elif base in _SCALARS:
            inner = _SCALARS[base]
        elif base in self.structs or base in self.callbacks:
            inner = base
        else:
            raise ValueError("no ctypes mapping for the C type %r" % c_type)
        for _ in range(depth):
            inner = "ctypes.POINTER(%s)" % inner
        return inner


def _split_parameter(parameter):
    """("const char *", "prefix") from "const char *prefix"."""
    m = re.fullmatch(r"(.*?[\s*])(\w+)", parameter.strip())
    if m is None:
        raise ValueError("unreadable parameter %r" % parameter)
    return m.group(1).strip(), m.group(2)


def _parameters(text, types, where):
    if text.strip() in ("", "void"):
        return []
    return [types.ctype(_split_parameter(p)[0], where) for p in text.split(",")]


def render_prototypes(header_text):
    """The text of _prototypes.py."""
    declarations = _declarations(header_text)
    types = _Types(declarations)
    out = _BANNER + ['"""ctypes declarations of every type and function of the C API."""',
                     "import ctypes", "", "# #define constants and enumerators"]
    for name, value in re.findall(r"^#define\s+(CKPT_\w+)\s+(\d+)\s*$", header_text, re.M):
        out.append("%s = %s" % (name, value))
    for enum, prefix in (("ckpt_log_level", "CKPT_LOG_LEVEL"), ("ckpt_metric", "CKPT_METRIC")):
        for name, value, _ in parse_enum(header_text, enum, prefix):
            out.append("%s_%s = %d" % (prefix, name, value))
    for name, fields in types.structs.items():
        out += ["", "", "class %s(ctypes.Structure):" % name, "    _fields_ = ["]
        for field in fields.split(";"):
            if not field.strip():
                continue
            # A function pointer: `int32_t (*barrier)(void *user_data, ...)`.
            pointer = re.fullmatch(r"\s*(.+?)\s*\(\*(\w+)\)\((.*)\)\s*", field, re.S)
            if pointer:
                result, field_name, parameters = pointer.groups()
                arguments = [types.ctype(result, "ret")] + _parameters(parameters, types, "callback")
                out.append("        (%r, ctypes.CFUNCTYPE(%s))," % (field_name, ", ".join(arguments)))
                continue
            c_type, field_name = _split_parameter(field)
            out.append("        (%r, %s)," % (field_name, types.ctype(c_type, "field")))
        out.append("    ]")
    out += ["", ""]
    for name, (result, parameters) in types.callbacks.items():
        arguments = [types.ctype(result, "ret")] + _parameters(parameters, types, "callback")
        out.append("%s = ctypes.CFUNCTYPE(%s)" % (name, ", ".join(arguments)))
    out += ["", "# (name, restype, argtypes) of every function", "FUNCTIONS = ("]
    for d in declarations:
        if d.startswith(("typedef ", "enum ")):
            continue
        m = re.fullmatch(r"(.+?[\s*])(ckpt_\w+)\((.*)\)", d)
        if m is None:
            raise ValueError("unreadable declaration %r" % d)
        result = types.ctype(m.group(1).strip(), "ret")
        arguments = _parameters(m.group(3), types, "arg")
        argtypes = ", ".join(arguments) + ("," if len(arguments) == 1 else "")
        out.append("    (%r, %s, (%s))," % (m.group(2), result, argtypes))
    out += [")", ""]
    return "\n".join(out)


OUTPUTS = {"_statuses.py": render, "_prototypes.py": render_prototypes}


def main(argv):
    header = argv[1] if len(argv) > 1 else DEFAULT_HEADER
    with open(header, encoding="utf-8") as f:
        text = f.read()
    for name, renderer in OUTPUTS.items():
        with open(os.path.join(PACKAGE, name), "w", encoding="utf-8") as f:
            f.write(renderer(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
