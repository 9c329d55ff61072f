"""Files a run writes and reads, safely: the one atomic writer (temporary name, fsync, rename; a refused write
becomes one line naming the file), lab1's temporary names and their cleanup, run-folder locks, and JSON / JSON-lines
files read back as one-line errors."""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path

from errors import CheckpointError, DiskFull


def atomic_write(path, write, needed=0):
    """Call write(tmp_path), fsync it, then rename over `path`: readers never see a partial file.

    needed: the bytes the write is expected to take, for the message when the disk is full. A refused write (full
    disk, file-size limit, read-only file system, I/O error) is an OSError naming `path`, also where torch.save
    raised it as a RuntimeError: run_main prints it as one line.
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a refused write as one of many RuntimeErrors
        cause = os_error(e)
        free = _free(path.parent)  # the partial file still takes its space
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT) or free < max(needed, 2**20):
            tmp.unlink(missing_ok=True)
            raise DiskFull(
                f"no space left on device writing {path}: {size(_free(path.parent))} free, "
                f"about {size(needed)} needed; the files written before are intact"
            ) from None
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def os_error(e):
    """The OSError behind e: e itself, or the one a RuntimeError (torch.save's writer) was raised while handling."""
    for _ in range(8):  # a short chain: __cause__ / __context__ of a RuntimeError
        if isinstance(e, OSError) or e is None:
            return e
        e = e.__cause__ or e.__context__
    return None


def _free(folder):
    try:
        return shutil.disk_usage(folder).free
    except OSError:  # the folder itself is gone: not a matter of space
        return 2**62


@contextlib.contextmanager
def naming(path):
    """An OSError of a write inside the block names `path` (a failed file.write() names no file)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def size(nbytes):
    """Bytes for people: "12 KiB", "3.4 MiB", "1.2 GiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1024:.0f} KiB"


TMP = ".lab1-tmp"  # what marks lab1's temporary names: nothing else is ever cleaned up


def _host():
    """This machine's name as it may appear in a file name: letters, digits, dots and dashes, at most 32
    characters (a long name keeps a hash of the whole, so that two long names stay apart)."""
    name = socket.gethostname() or "localhost"
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", name)
    return safe if len(safe) <= 32 else f"{safe[:24]}_{hashlib.sha1(name.encode()).hexdigest()[:7]}"


def tmp_name(path):
    """Where `path` is written before it is renamed into place: `.NAME.lab1-tmp-HOST-PID` beside it. The host
    is in the name because a PID says nothing about a process on another machine that shares the folder."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP}-{_host()}-{os.getpid()}")


def remove_stale_tmp(folder):
    """Delete lab1's temporary files (and folders) left by writers on this host that were killed (their PID is
    gone). Another host's are never touched: its writer may be alive there. Names without a host (written
    before hosts were recorded) count as this host's."""
    for p in Path(folder).glob(f".*{TMP}*"):
        tail = p.name.rsplit(TMP, 1)[-1]
        host, _, pid = tail[1:].rpartition("-") if tail.startswith("-") else (_host(), "", tail)
        if host == _host() and pid.isdigit() and not _alive(int(pid)) and not p.is_symlink():
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, held while a process trains in it; the OS releases it on death.

    POSIX record locks (fcntl.lockf) also work on NFS where the server supports locking (NFSv4, or lockd).
    """

    def __init__(self, folder, name=".lock", shared=False):
        self.fd = os.open(Path(folder) / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
        self.held_then = self.fd is not None

    @staticmethod
    def busy(folder, name=".lock"):
        """Whether another process holds the lock of `folder` right now (a lock file is needed to hold one)."""
        if not (Path(folder) / name).exists():
            return False
        lock = RunLock(folder, name)
        lock.release()
        return not lock.held_then

    @property
    def held(self):
        return self.fd is not None

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_json(path, obj):
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), needed=len(text))


def read_json(path, what="file"):
    """A JSON file of a run folder, or a one-line CheckpointError saying it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise CheckpointError(f"{what} {path} is unreadable or damaged ({type(e).__name__})") from None


def read_jsonl(path):
    """The records of a JSON-lines file ([] if it is missing), or a one-line CheckpointError if one is damaged."""
    path = Path(path)
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is unreadable or damaged ({type(e).__name__})") from None


def write_jsonl(path, records):
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), needed=len(text))


def append_jsonl(path, record):
    """One line at the end of `path`. A kill part-way can leave a torn last line: resume rewrites the file from
    the checkpoint's history, which is the truth."""
    with naming(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


TEST_MARK = "†"  # on a table's test figures made on --test_subset examples; the footnote says so


def write_report(folder, summary, lines, test_subset=0, figures=None):
    """The end of every report: the figures (a function that draws them, if any), results.md (a Markdown table, with
    the --test_subset footnote where its test figures were made on a subset), printed, then summary.json last (it
    marks the work finished)."""
    if figures is not None:
        figures()
    if test_subset:
        lines = [
            *lines,
            "",
            f"{TEST_MARK} on a stratified {test_subset:,}-example subset of the test set (--test_subset)",
        ]
    text = "\n".join(lines) + "\n"
    atomic_write(Path(folder) / "results.md", lambda tmp: Path(tmp).write_text(text), needed=len(text))
    print(text, end="", flush=True)
    write_json(Path(folder) / "summary.json", summary)


def publish(src, dst):
    """dst as a second name of the finished model src (a hard link; a copy where links are impossible)."""
    if Path(dst).exists() and os.path.samefile(src, dst):
        return

    def link_or_copy(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, link_or_copy, needed=Path(src).stat().st_size)
