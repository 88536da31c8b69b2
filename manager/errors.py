"""The errors the manager's commands report: one line for the person at the terminal, an exit
status for scripts, never a traceback.

Exit statuses (``cli.EXIT_HELP`` says them in ``--help``): 0 the command did what was asked; 1
the job ran but ended with failed shards, or stopped (disk full); 2 a usage or input error,
before any shard ran, or an engine that cannot run the job (nothing done is lost); 130
interrupted. ``cli.main`` is the one place that turns these errors into a message and a status.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class LdawtError(Exception):
    """A problem worded for the user; ``exit_status`` is what the command exits with."""

    exit_status = EXIT_USAGE


class InputError(LdawtError, ValueError):
    """A problem with the inputs, the options or the job folder, worded for the person who gave
    them."""


class JobStopped(LdawtError):
    """The job cannot go on now, but nothing is lost: rerunning the same command resumes it."""

    exit_status = EXIT_JOB_FAILED
