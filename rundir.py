"""A run folder: its name, its atomic creation, the marks that it is in use (.busy) and how a stop names the
command that continues it."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import distributed
from errors import CheckpointError, UsageError
from files import TMP, RunLock, naming, read_json, remove_stale_tmp, tmp_name, write_json

NAME_MAX = 200  # bytes of a folder name; file systems allow 255, and temporary names add a suffix


_hints = []


CHILD = "LAB1_STUDY_CHILD"  # set by a launcher's job (launch.py): the one child that process trains
SPAWNED = "LAB1_STUDY_WORKER"  # set in the environment of the workers study.spawn_workers starts
BUSY = ".busy"  # held shared by every command working in a run folder, training or not: --overwrite waits for none


_occupied = []
_ends = []  # command.txt of the folder this command made or resumed (create_run_dir, record_resume): record_end


def working_in(run_dir):
    """From now until the command ends: a stop names `--resume run_dir` (continue_with), run_dir is marked in
    use (released by run_main), so that --overwrite refuses it."""
    continue_with(command("--resume", run_dir))
    _occupied.append(RunLock(run_dir, BUSY, shared=True))


def begin_command():
    """A command starts (run_main): nothing is recorded yet (in-process callers of main leave stale entries)."""
    _ends.clear()


def record_end(code, seconds):
    """Append to the command.txt of the folder this command made or resumed (the first one: a study's, not its
    child's) when it ended, its exit code and its wall time: the figures a run reports stand beside the command
    that made them and what it took. A command that recorded nothing there (a refused resume) appends nothing;
    nor do a study's workers and jobs (the command that started them records its own end); a failed write is
    said in a note."""
    path, done = (_ends or [None])[0], time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    _ends.clear()
    if path is None or not _records(path):
        return
    h, m, sec = int(seconds // 3600), int(seconds % 3600 // 60), seconds % 60
    wall = f"{h} h {m} min {sec:.0f} s" if h else f"{m} min {sec:.0f} s" if m else f"{sec:.1f} s"
    how = "exit code 1 (an uncaught error)" if code is None else f"exit code {code}"
    try:
        with open(path, "a") as f:
            f.write(f"# ended {done}: {how}, wall time {wall}\n")
    except OSError as e:  # the command is ending: its exit code stands, and the missing line is said
        print(f"note: the end of this command was not recorded in {path} ({e.strerror or e})", file=sys.stderr)


def vacate():
    while _occupied:
        _occupied.pop().release()


def continue_with(hint):
    """From now until the command ends, a stop prints `hint`, also once the work is done (a resume of a finished run
    says so). The first one set wins: a study's, not its child's."""
    if not _hints:
        _hints.append(hint)


def take_hint():
    hint = f"continue with: {_hints[0]}" if _hints else "nothing was saved; run the command again"
    _hints.clear()
    return hint


def command(*args):
    return shlex.join(["python", sys.argv[0], *map(str, args)])


def check_run_name(save_dir, name):
    """A plain, not too long name in a writable save_dir; checked before any work."""
    if not name or os.sep in name or name in (".", "..") or not name.isprintable() or TMP in name:
        raise UsageError(f"--run_name {name!r} must be a plain folder name, without a path separator (or {TMP})")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise UsageError(f"--run_name {name!r} is not valid UTF-8 text") from None
    if len(name.encode()) > NAME_MAX:
        raise UsageError(f"--run_name is {len(name.encode())} bytes long; folder names may have at most {NAME_MAX}")
    probe = Path(save_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK) or (os.geteuid() == 0 and not probe.stat().st_mode & 0o200):
        raise UsageError(f"--save_dir {save_dir}: {probe} is not a writable folder")


def short_name(name):
    """An automatic name cut to NAME_MAX bytes, with a hash of the whole so that different names stay different."""
    if len(name.encode()) <= NAME_MAX:
        return name
    import hashlib

    return f"{name.encode()[: NAME_MAX - 12].decode(errors='ignore')}_{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def check_run_dir(save_dir, name, overwrite=False, auto_named=False, reads=()):
    """What create_run_dir would refuse, said before any work: a bad name or save_dir, an existing folder (without
    --overwrite), or, with it, something that is not a lab1 run folder, or a folder that holds a file the command
    reads once the folder is replaced (`reads`: the paths of such input flags), which would be deleted under it."""
    check_run_name(save_dir, name)
    target = Path(save_dir) / name
    if not (target.exists() or target.is_symlink()) or auto_named and not overwrite:
        return
    if not overwrite:
        raise UsageError(
            f"run folder {target} already exists; pass --overwrite or another --run_name "
            f"(or continue it: {command('--resume', target)})"
        )
    if target.is_symlink() or (why := not_lab1s(target)):
        raise UsageError(
            f"{target} is not a lab1 run folder ({why or 'a link'}); --overwrite replaces only folders lab1 made: "
            "pass another --run_name"
        )
    for path in filter(None, reads):
        if target.resolve() in Path(path).resolve().parents:
            raise UsageError(
                f"--overwrite would delete {path}, which this command reads: copy it out of {target} first, or "
                "pass another --run_name"
            )


MARK = ".lab1-run"  # written into every run folder create_run_dir makes: --overwrite replaces only those
KINDS = ("exercise1", "study", "exercise2", "finetune")
_OLD_KEYS = ({"model", "data", "train", "output"}, {"teacher", "student", "distill"}, {"modes", "transfer"}, {"base"})


def not_lab1s(folder):
    """Why `folder` is not a run folder lab1 made ("" when it is one): it holds MARK, or, made before MARK existed,
    lab1's command.txt and a config.json that is a lab1 run's (its kind, or the keys lab1 wrote before kinds)."""
    folder = Path(folder)
    if (folder / MARK).is_file():
        return ""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return "no lab1 config.json"
    ours = isinstance(config, dict) and (
        config.get("kind") in KINDS or "kind" not in config and any(keys <= config.keys() for keys in _OLD_KEYS)
    )
    if not ours:
        return "its config.json is not a lab1 run's"
    return "" if (folder / "command.txt").is_file() else f"no {MARK} and no command.txt"


def code_version():
    """The code a run ran, as command.txt's second line: "# code: git commit SHA" of the repository this file is in,
    with "+ uncommitted changes" when tracked files differ from it; "# code: not in a git work tree" without git.
    A figure is only as reproducible as the code that made it is findable."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=True)

    try:
        sha = git("rev-parse", "HEAD").stdout.strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except FileNotFoundError:
        return "# code: unknown (no git command)"
    except subprocess.TimeoutExpired:
        return "# code: unknown (git did not answer)"
    except (OSError, subprocess.SubprocessError):  # git says this is not a work tree
        return "# code: not in a git work tree"
    return f"# code: git commit {sha}" + " + uncommitted changes" * dirty


def record_resume(run_dir):
    """Append the resuming command and the code it runs to command.txt: a run continued under other code says so.
    A folder without command.txt (a study's child, which its study's command.txt speaks for) is left as it is, and
    so is a study's folder in the workers and jobs that the recorded command started."""
    path = Path(run_dir) / "command.txt"
    if _records(path):
        with naming(path), open(path, "a") as f:
            f.write(f"# resumed: {shlex.join([sys.executable, *sys.argv])}\n{code_version()}\n")
        _ends.append(path)


def _records(path):
    """Whether this process appends to command.txt at `path`: it exists (a study's child has none: its study's
    speaks for it), and this is the command that was typed (not a rank > 0, nor a study's worker or job)."""
    return path.is_file() and distributed.is_main() and not (os.environ.get(SPAWNED) or os.environ.get(CHILD))


def create_run_dir(save_dir, name, config, overwrite=False, auto_named=False):
    """SAVE_DIR/NAME with config.json, command.txt and the MARK that lab1 made it, made atomically: it appears
    whole or not at all, and two runs with one name never share it. An existing folder is an error unless overwrite
    (an automatic name gets a numeric suffix instead)."""
    check_run_dir(save_dir, name, overwrite, auto_named)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(save_dir)
    tmp = tmp_name(save_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_json(tmp / "config.json", config)
        (tmp / ".lock").touch()  # the run's lock file (RunLock), there from the start
        command_txt = shlex.join([sys.executable, *sys.argv]) + "\n" + code_version()
        for name_, text in (("command.txt", command_txt), (MARK, "made by lab1")):
            with naming(tmp / name_):
                (tmp / name_).write_text(text + "\n")
        if overwrite and (save_dir / name).exists():
            busy = [
                p.parent
                for lock in (".lock", BUSY)
                for p in (save_dir / name).rglob(lock)
                if RunLock.busy(p.parent, lock)
            ]
            if busy:
                raise UsageError(
                    f"{busy[0]} is being trained by another process right now; --overwrite would destroy its work"
                )
            shutil.rmtree(save_dir / name)
        for i in range(1, 1000):
            target = save_dir / (name if i == 1 else f"{name}_{i}")
            if not target.exists():
                try:
                    os.rename(tmp, target)  # fails if another process got there first with a non-empty folder
                    _ends.append(target / "command.txt")
                    return target
                except OSError:
                    pass
            if not auto_named:
                raise UsageError(
                    f"run folder {target} already exists; pass --overwrite or another --run_name "
                    f"(or continue it: {command('--resume', target)})"
                )
        raise UsageError(f"could not create a run folder for {save_dir / name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finished(run_dir):
    """Whether the run in run_dir (a run, a phase, a child or a whole study) says it finished."""
    try:
        return read_json(Path(run_dir) / "summary.json").get("status") == "finished"
    except (CheckpointError, AttributeError):  # not there yet, or damaged
        return False


def script_of(kind):
    return "exercise2.py" if kind in ("exercise2", "finetune") else "exercise1.py"


def kind_of(config):
    """exercise1 / study / exercise2 / finetune (folders written before the kind was recorded: by their keys)."""
    return config.get("kind") or (
        "exercise2"
        if "teacher" in config
        else "finetune"
        if "modes" in config
        else "study"
        if "base" in config
        else "exercise1"
    )


def timestamp():
    return time.strftime("%Y%m%d-%H%M%S")
