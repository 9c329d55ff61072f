"""Run folders and loggers: config.json, command.txt, metrics.jsonl, summary.json, and W&B when asked.

W&B is imported only when used, and a W&B failure of any kind prints one warning and never stops training.
"""
import json
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

from checkpoint import atomic_write


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def write_json(path, obj):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def read_jsonl(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_jsonl(path, records):
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in records)))


def check_save_dir(save_dir, run_name):
    """Fail early (before any work) on a run name with a path separator or an unwritable save_dir."""
    if run_name and (os.sep in run_name or "/" in run_name or run_name in (".", "..")):
        raise UsageError(f"--run_name {run_name!r} must be a plain name, without a path separator")
    probe = Path(save_dir)
    while not probe.exists():
        probe = probe.parent
    # The mode bits are checked too: root passes os.access on a folder marked read-only.
    if not probe.is_dir() or not os.access(probe, os.W_OK) or not probe.stat().st_mode & stat.S_IWUSR:
        raise UsageError(f"--save_dir {save_dir}: {probe} is not a writable folder")


def create_run_dir(save_dir, run_name, overwrite=False, auto_named=False):
    """Make SAVE_DIR/RUN_NAME atomically: two runs with one name never share a folder.

    An existing folder is an error unless --overwrite; an automatic name gets a numeric suffix instead.
    """
    check_save_dir(save_dir, run_name)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    path = Path(save_dir) / run_name
    if overwrite and path.exists():
        shutil.rmtree(path)
    for i in range(1, 1000):
        candidate = path if i == 1 else path.with_name(f"{run_name}_{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if not auto_named:
                raise UsageError(f"run folder {path} already exists; pass --overwrite, another --run_name, "
                                 f"or --resume {path}/last.pt") from None
    raise UsageError(f"could not create a run folder for {path}")


def write_run_files(path, config):
    write_json(Path(path) / "config.json", config)
    (Path(path) / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")


def _has_wandb_credentials():
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class WandbLogger:
    """A thin, failure-proof wrapper: every call is a no-op once W&B is off or has failed."""

    def __init__(self, mode, project, name, config, group=None, resume_id=None):
        self.run = None
        if mode == "disabled":
            return
        if mode == "auto":
            mode = "online" if _has_wandb_credentials() else "offline"
        try:
            import wandb
            self.wandb = wandb
            self.run = wandb.init(project=project, name=name, group=group, config=config, mode=mode,
                                  id=resume_id, resume="allow" if resume_id else None,
                                  settings=wandb.Settings(init_timeout=30, silent=True))
            if mode == "offline":
                print(f"W&B offline: sync later with `wandb sync {self.run.dir.rsplit('/files', 1)[0]}`")
        except Exception as e:
            warn(f"W&B could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                 "training goes on without it")
            self.run = None

    @property
    def id(self):
        return self.run.id if self.run else None

    def _safe(self, fn, *args, **kwargs):
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            warn(f"W&B call failed ({type(e).__name__}); W&B logging is off for the rest of this run")
            self.run = None

    def log(self, data, step=None):
        self._safe(lambda: self.run.log(data, step=step))

    def log_images(self, paths, step=None):
        self._safe(lambda: self.run.log({Path(p).stem: self.wandb.Image(str(p)) for p in paths if Path(p).exists()},
                                        step=step))

    def finish(self, summary=None):
        def _finish():
            if summary:
                self.run.summary.update(summary)
            self.run.finish()
        self._safe(_finish)
        self.run = None
