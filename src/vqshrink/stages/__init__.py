"""Stage functions: the work behind each Snakemake rule.

A stage is a module-level function taking keyword arguments only (named inputs, named
outputs, settings), so that the launcher can run it in-process or ship it to a SLURM job
by reference. ``@stage`` gives each one the same frame: logging into the rule's log file
(``log=`` keyword), a CPU thread count, and a record of start, end and failure.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vqshrink.errors import PlainError

log = logging.getLogger("vqshrink")


def configure_logging(log_file: str | os.PathLike | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for handler in list(root.handlers):
        if getattr(handler, "_vqshrink", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._vqshrink = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def stage(fn: Callable) -> Callable:
    """Decorate a stage function (see module docstring)."""

    @functools.wraps(fn)
    def run(*, log: str | None = None, threads: int | None = None, **kwargs):
        configure_logging(log)
        if threads:
            torch.set_num_threads(threads)
        logger = logging.getLogger(fn.__module__)
        rank = os.environ.get("RANK", "0")
        logger.info("stage %s starts (rank %s, pid %d)", fn.__qualname__, rank, os.getpid())
        t0 = time.perf_counter()
        try:
            result = fn(**kwargs)
        except PlainError as err:  # its message says what to do: logged without a traceback
            logger.error("stage %s failed after %.1f s: %s", fn.__qualname__,
                         time.perf_counter() - t0, err)
            raise
        except BaseException:
            logger.exception("stage %s failed after %.1f s", fn.__qualname__, time.perf_counter() - t0)
            raise
        logger.info("stage %s done in %.1f s", fn.__qualname__, time.perf_counter() - t0)
        return result

    return run
