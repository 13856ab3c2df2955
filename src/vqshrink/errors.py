"""Errors whose message already says what happened and what to do.

Such an error is logged and shown without a traceback: ``workflow/scripts/stage.py`` exits
with its message alone. This module imports nothing heavy, so the process that waits on a
SLURM job (which never imports torch) can catch it too.
"""


class PlainError(RuntimeError):
    """An error for the user, not for a debugger: its message names the file or key and the fix."""
