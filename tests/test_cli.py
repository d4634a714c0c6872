"""The command line explains itself."""

from __future__ import annotations

import argparse

from regbench.cli import build_parser


def test_every_verb_says_what_it_reads_and_writes():
    """`regbench <verb> --help` names what the verb reads and writes."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in verbs.choices.items():
        text = sub.format_help()
        assert "Reads" in text and "Writes" in text, name
