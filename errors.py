"""The errors a command can end with, and the exit code and one line each one becomes (run by command.run_main).

Every message is one line meant for the user. Bad input (a flag, a data set, a checkpoint) exits 2, a diverged
training 3, a write the disk refused 1, a stop 130 / 143.
"""

import signal
import sys


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Stopped(KeyboardInterrupt):
    """Ctrl-C / SIGTERM outside the training loop (or a second Ctrl-C): one line, exit 130 / 143."""

    def __init__(self, signum=signal.SIGINT, message=None):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class DataError(Exception):
    """Missing, corrupt or unusable data; the message is one line meant for the user (newlines are folded)."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, unsafe, or does not fit; one-line message."""


class DiskFull(Exception):
    """No space left while writing a run's file; one-line message naming the path and the space needed."""


class Diverged(Exception):
    """The loss became NaN or infinite."""
