"""Command line: one verb per pipeline stage; the Snakemake rules call these.

Each verb takes ``--settings``, the JSON of the validated config sections it depends on, so a
rule reruns exactly when those sections change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from regbench.cli import bench, data, register, report, train
from regbench.errors import InputError

# Groups of verbs in the order ``--help`` lists them: the pipeline's own order.
GROUPS = (data, train, register, report, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = json.loads(args.settings) if args.settings.strip().startswith("{") else {}
    threads = args.threads or int(settings.get("threads", 1))
    # numba's OpenMP pool starts NUMBA_NUM_THREADS threads (default: every core) whose idle
    # spinning slows two single-threaded jobs on one machine about tenfold; size it to the job
    # before numba is first imported (an explicit setting in the environment wins).
    if "numba" not in sys.modules:  # numba rereads it on compiling: never change it later
        os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        args.func(args)
    except InputError as exc:
        logging.error("%s", exc)
        print(f"regbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
