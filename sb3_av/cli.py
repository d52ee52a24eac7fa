"""The ``sb3-av`` command: ``sb3-av train | evaluate | record | check-logs | plot`` (also ``python -m sb3_av ...``).

Each subcommand lives in its module as a pair ``add_*_arguments(parser)`` / ``run_*_command(args) -> int``;
this file only maps names to them (imported when used, so ``sb3-av check-logs`` does not load the simulators).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["OneLineErrorParser", "main"]


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (no usage text) and exit status 2, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


#: subcommand -> (module, arguments function, run function, help)
_SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": (
        "sb3_av.zoo.train",
        "add_train_arguments",
        "run_train_command",
        "train (or tune with -optimize) an agent with the package's configs: the same flags as train.py",
    ),
    "evaluate": (
        "sb3_av.zoo.enjoy",
        "add_evaluate_arguments",
        "run_evaluate_command",
        "evaluate a run folder, a saved model or the PID + pure-pursuit baseline: driving metrics as a table and JSON "
        "(the same command as enjoy.py)",
    ),
    "record": (
        "sb3_av.record",
        "add_record_arguments",
        "run_record_command",
        "record evaluation episodes of a run folder, a saved model or the baseline as an MP4 and a GIF (Lite envs)",
    ),
    "check-logs": (
        "sb3_av.log_check",
        "add_check_logs_arguments",
        "run_check_logs_command",
        "check a run's gradient diagnostics (AFTER <= max_norm, actor MLP norms > 0, alerts); exit 1 on failure",
    ),
    "plot": (
        "sb3_av.plotting",
        "add_plot_arguments",
        "run_plot_command",
        "write learning curves (return, success rate, gradient norms) of run folders as PNG",
    ),
}


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` imports its module to add its arguments."""
    parser = OneLineErrorParser(prog="sb3-av", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, add_arguments, _, help_text) in _SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            getattr(importlib.import_module(module_name), add_arguments)(subparser)
    return parser


def _version() -> str:
    from sb3_av import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sb3-av`` console script; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(argv).parse_args(argv)
    module_name, _, run, _ = _SUBCOMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module_name), run)(args))
    except KeyboardInterrupt:
        print("sb3-av: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the subcommands report what they expect; anything else still gets one line
        if os.environ.get("SB3AV_DEBUG"):
            raise
        message = " ".join(str(exc).split())
        print(
            f"sb3-av {args.command}: error: {type(exc).__name__}: {message} (SB3AV_DEBUG=1 for the traceback)", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
