"""The command wrapper every entry script runs under: signal handlers, and each error turned into its exit code and
one line (with the command that continues, where work can be continued)."""

import contextlib
import errno
import os
import shutil
import signal
import sys
import time

from engine import STOP
from errors import CheckpointError, DataError, DiskFull, Diverged, UsageError
from files import size
from rundir import begin_command, record_end, take_hint, vacate
from wandb_log import close_wandb

# What a write, or the folder it writes in, can be refused with: each is one line, exit 1.
WRITE_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EIO,
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ESTALE,
    errno.ETXTBSY,
}


def run_main(main, argv=None):
    """Run main(argv) under the exit-code contract: 0 done, 2 bad input (one line), 3 diverged, 1 disk full,
    130 / 143 interrupted by Ctrl-C / SIGTERM (one line saying how to continue, where work can be continued)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, STOP.handler)
    began, code = time.monotonic(), None  # None at the end: an error that is a traceback
    begin_command()
    try:
        code = main(argv) or 0
    except (UsageError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except Diverged as e:
        print(f"error: diverged: {e}", file=sys.stderr)
        code = 3
    except DiskFull as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except OSError as e:  # a refused write (full disk, file-size limit, read-only, I/O error) or a lost folder,
        # named by files.atomic_write / naming; or a path that cannot be one (too long, a file where a folder
        # belongs): bad input, exit 2
        bad_path = e.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP)
        if not bad_path and e.errno not in WRITE_ERRORS:
            raise
        where = f": {str(e.filename)[:200]}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename:
            with contextlib.suppress(OSError):
                where += f" ({size(shutil.disk_usage(os.path.dirname(os.path.abspath(e.filename))).free)} free)"
        print(f"error: {e.strerror or e}{where}; the files written before are intact", file=sys.stderr)
        code = 2 if bad_path else 1
    except SystemExit as e:  # argparse's, or a script's own exit: its code is the command's
        code = e.code
        raise
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        what = str(e) or "interrupted by SIGINT"
        print(f"{what}; {take_hint()}", file=sys.stderr)
        code = 128 + signum
    finally:
        close_wandb()
        take_hint()
        record_end(code, time.monotonic() - began)
        vacate()
        for s in (signal.SIGINT, signal.SIGTERM):  # the work is over: a late Ctrl-C must not print a traceback
            signal.signal(s, signal.SIG_IGN)
    sys.stdout.flush()
    sys.exit(code or 0)
