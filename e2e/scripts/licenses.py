#!/usr/bin/env python3
"""Checks that every crate the workspace builds may be shipped under kubemail's Apache-2.0.

usage: licenses.py            (run from the repository root; reads `cargo metadata --locked`)

Each package's SPDX expression (AND, OR, WITH, parentheses; the old "A/B" spelling as OR) must be
satisfiable with permissive licences alone. A package with no expression, or one that needs a
copyleft licence (GPL, LGPL, AGPL, ...), fails the check with its name and expression. Exits 1 on
any failure, printing one line per package.
"""
import json
import re
import subprocess
import sys

# Permissive licences compatible with distributing kubemail under Apache-2.0.
ALLOWED = {
    "0BSD",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    "MIT-0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "Zlib",
}
# Exceptions that only widen what a licence allows.
ALLOWED_EXCEPTIONS = {"LLVM-exception"}


def tokens(expression):
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expression.replace("/", " OR "))


def allowed(expression):
    """Whether the SPDX expression can be met with allowed licences."""
    toks = tokens(expression)
    pos = 0

    def parse_or():
        nonlocal pos
        value = parse_and()
        while pos < len(toks) and toks[pos] == "OR":
            pos += 1
            right = parse_and()
            value = value or right
        return value

    def parse_and():
        nonlocal pos
        value = parse_with()
        while pos < len(toks) and toks[pos] == "AND":
            pos += 1
            right = parse_with()
            value = value and right
        return value

    def parse_with():
        nonlocal pos
        value = parse_atom()
        if pos < len(toks) and toks[pos] == "WITH":
            exception = toks[pos + 1]
            pos += 2
            value = value and exception in ALLOWED_EXCEPTIONS
        return value

    def parse_atom():
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok == "(":
            value = parse_or()
            if toks[pos] != ")":
                raise ValueError(f"unbalanced parentheses in {expression!r}")
            pos += 1
            return value
        return tok in ALLOWED

    value = parse_or()
    if pos != len(toks):
        raise ValueError(f"cannot parse {expression!r}")
    return value


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
        ).stdout
    )
    failures = []
    for package in metadata["packages"]:
        expression = package.get("license")
        name = f"{package['name']} {package['version']}"
        if not expression:
            failures.append(f"{name}: no SPDX licence expression")
            continue
        try:
            if not allowed(expression):
                failures.append(f"{name}: {expression}")
        except (ValueError, IndexError) as err:
            failures.append(f"{name}: {err}")
    for line in failures:
        print(f"licenses: not compatible with Apache-2.0: {line}", file=sys.stderr)
    print(f"licenses: {len(metadata['packages'])} packages checked, {len(failures)} refused")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
