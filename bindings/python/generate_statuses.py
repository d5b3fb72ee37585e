#!/usr/bin/env python3
"""Generate ckpt_manager/_statuses.py from the C header's ckpt_status and
ckpt_dtype enums and version macros.

Usage: python3 generate_statuses.py [HEADER] [OUTPUT]
  HEADER defaults to ../../include/ckpt_manager.h (relative to this script),
  OUTPUT to ckpt_manager/_statuses.py; "-" writes to stdout.

tests/test_errors.py regenerates the text and fails if the checked-in file
differs, so the Python statuses cannot drift from the header.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_HEADER = os.path.join(HERE, "..", "..", "include", "ckpt_manager.h")
DEFAULT_OUTPUT = os.path.join(HERE, "ckpt_manager", "_statuses.py")

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
    statuses, doc = [], []
    for line in match.group("body").splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            doc.append(stripped[2:].strip())
            continue
        member = member_re.match(line)
        if member:
            statuses.append((member.group("name"), int(member.group("value")), " ".join(doc)))
            doc = []
        elif stripped:
            raise ValueError("unexpected line in %s: %r" % (type_name, line))
    if not statuses:
        raise ValueError("%s has no members" % type_name)
    return statuses


def parse(header_text):
    """(statuses, dtypes, {MAJOR: n, ...}) from the header text."""
    statuses = parse_enum(header_text, "ckpt_status", "CKPT_STATUS")
    dtypes = parse_enum(header_text, "ckpt_dtype", "CKPT_DTYPE")
    versions = {k: int(v) for k, v in _VERSION.findall(header_text)}
    return statuses, dtypes, versions


def render(header_text):
    statuses, dtypes, versions = parse(header_text)
    out = [
        "# Generated from include/ckpt_manager.h by generate_statuses.py; do not edit.",
        "# Regenerate with: python3 bindings/python/generate_statuses.py",
        "",
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


def main(argv):
    header = argv[1] if len(argv) > 1 else DEFAULT_HEADER
    output = argv[2] if len(argv) > 2 else DEFAULT_OUTPUT
    with open(header, encoding="utf-8") as f:
        text = render(f.read())
    if output == "-":
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
