"""What every command line is checked against before any work: numeric ranges, output paths, one-line errors."""
from __future__ import annotations

import argparse


# Every numeric option of every subcommand and its allowed range, checked before any work (a test walks the
# parser and fails on a numeric option missing here). Huge values are refused too: a --topk of 10^12 or 10^9
# images is a typo, not a job.
NUMERIC_OPTIONS: dict[str, tuple[float, float]] = {
    "topk": (1, 100_000), "queries": (1, 100_000), "batch": (1, 65_536), "chunk": (1, 10_000_000),
    "workers": (0, 256), "ids": (1, 1_000_000), "jobs": (0, 256), "test_ids": (1, 1_000_000),
    "val_ids": (0, 1_000_000), "pid": (0, 2 ** 31 - 1), "seeds": (1, 100), "ablation_seeds": (0, 100),
    "seed": (0, 2 ** 32 - 1), "images": (1, 100_000_000),
    "epochs": (1, 100_000),
    "recall": (0.01, 1.0), "shards": (1, 4096), "shard_timeout": (0.01, 86_400), "opset": (1, 100), "static_batch": (1, 65_536),
}


def check_numbers(args) -> None:
    """Every numeric option (NUMERIC_OPTIONS): finite and within its range, checked before any work."""
    import math

    from .errors import ConfigError
    for name, (low, high) in NUMERIC_OPTIONS.items():
        v = getattr(args, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v) or not low <= v <= high:
                kind = "an integer" if isinstance(v, int) else "a number"
                raise ConfigError(f"--{name.replace('_', '-')} {v}: expected {kind} in [{low}, {high}]")


def option_names(parser: argparse.ArgumentParser, args) -> dict[str, str]:
    """dest -> how the user wrote it (``--input-size``, or the positional's name) for the subcommand ``args`` ran."""
    names: dict[str, str] = {}
    p = parser
    while p is not None:
        nxt = None
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                nxt = act.choices.get(getattr(args, act.dest, None))
            elif not isinstance(act, argparse._HelpAction):
                names[act.dest] = act.option_strings[-1] if act.option_strings else act.dest
        p = nxt
    return names


def check_strings(args, names: dict[str, str]) -> None:
    """Every text option and positional: not empty or blank (an empty --out would mean the current folder) and no
    NUL byte (no file can be named with one), checked before any work."""
    from .errors import ConfigError
    for dest, flag in names.items():
        v = getattr(args, dest, None)
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(item, str) and (not item.strip() or "\x00" in item):
                what = "a NUL byte" if "\x00" in item else "an empty value"
                raise ConfigError(f"{flag} {item!r}: {what}; expected a name, path or value")


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a wrong type, an unknown choice) as one line, like every other scireid error."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def check_output_paths(args) -> None:
    """Files a command will write (--out of embed / export, --html of search): a file path whose folder exists or
    can be made, never a folder itself and never below a file."""
    from .io_utils import check_output_file
    for attr, flag in (("html", "--html"),):
        if getattr(args, attr, None):
            check_output_file(getattr(args, attr), flag)
    if args.cmd in ("embed", "export") and getattr(args, "out", None):
        check_output_file(args.out, "--out")
