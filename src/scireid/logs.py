"""Logging for the command line and the processes it starts (the demo's runs): one format, one place."""
from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool) -> None:
    # our messages at INFO; other libraries' (open_clip logs to the root logger) only from WARNING up
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("scireid").setLevel(logging.DEBUG if verbose else logging.INFO)
