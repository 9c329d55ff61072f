"""Weights & Biases logging: choosing the mode, one failure-proof run wrapper, sweep-agent sharing, offline sync.

wandb is imported only when a logger is not disabled. A W&B problem prints one line starting with "warning: "
and makes that logger a no-op; training never stops for it. No printed line carries a key or a netrc line.
What lab1 logs, and under which names, is tracking.py's.
"""

import contextlib
import io
import logging
import netrc
import os
import re
import shlex
import sys
import urllib.parse
from pathlib import Path

_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
_shared = None  # under a sweep agent: the one run every WandbLogger of this process logs to
EPOCH, STEP = "epoch", "global_step"  # the two x axes
EPOCH_METRICS = ("train/*", "val/*", "grad/*", "lr", "epoch_time_s")


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def why(e):
    """Exception type and first line, with anything shaped like a key or token masked."""
    line = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {re.sub(r'[A-Za-z0-9_.-]{32,}', '***', line)}" if line else type(e).__name__


def resolve_mode(requested):
    """An explicit online/offline/disabled stands. "auto": WANDB_MODE if the user set it, else online exactly
    when wandb itself has credentials for its configured server (no prompt, no network), else offline."""
    if requested in ("online", "offline", "disabled"):
        return requested
    if requested != "auto":
        raise ValueError(f"W&B mode {requested!r}: expected auto, online, offline or disabled")
    if (env := os.environ.get("WANDB_MODE", "").strip().lower()) in _ENV_MODES:
        return _ENV_MODES[env]
    try:
        import wandb  # noqa: F401
    except ImportError:  # no wandb: the logger says so
        return "offline"
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # wandb's netrc warnings may quote the file: say it our way
            auth = _private_lookup() if private_lookup_tested() else _documented_lookup()
    except Exception as e:
        warn(f"W&B credentials could not be read ({type(e).__name__}); logging offline")
        return "offline"
    if not auth and said.getvalue().strip():
        warn("W&B could not use its saved credentials (check NETRC or ~/.netrc); logging offline")
    return "online" if auth else "offline"


# wandb releases whose private credential lookup (wandb.sdk.lib.wbauth) lab1 is tested with, [from, to). Outside
# them lab1 uses only what wandb documents; tests/test_wandb.py fails when a release in the range stops offering it.
PRIVATE_LOOKUP_TESTED = ((0, 31), (0, 32))


def private_lookup_tested():
    from importlib.metadata import version

    installed = tuple(int(x) for x in re.findall(r"\d+", version("wandb"))[:2])
    return PRIVATE_LOOKUP_TESTED[0] <= installed < PRIVATE_LOOKUP_TESTED[1]


def _private_lookup():
    """wandb's own lookup for its configured server (WANDB_BASE_URL, `wandb login --host`): WANDB_API_KEY, an
    identity token file, netrc, settings; no prompt, no network."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    host = wandb_setup.singleton().settings.base_url
    return wbauth.authenticate_session(host=host, source="lab1", prompt=False, verify=False, update_session=False)


def _documented_lookup():
    """What wandb documents for credentials: WANDB_API_KEY, else a netrc entry (NETRC, or ~/.netrc) for the server
    WANDB_BASE_URL names (api.wandb.ai by default)."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """One W&B run whose calls never raise; under a sweep agent, a prefixed view of the process's shared run.

    Epoch metrics (train/*, val/*, lr, epoch_time_s, grad/*) are charted against `epoch`, per-step ones (batch/*)
    against `global_step`; the epoch metrics' summary is the best epoch's (log_epoch sets it), not the last's.
    """

    def __init__(
        self, mode, project, name, config, *, group=None, job_type=None, resume_id=None, dir=None, prefix="", inputs=()
    ):
        global _shared
        # `wandb agent` starts each trial with WANDB_SWEEP_ID and WANDB_RUN_ID set (wandb_agent.py); only there do
        # several loggers share one run, the agent's, holding every phase: keys prefixed, no phase name, group or
        # job type (the sweep groups its trials), no resume id of an earlier trial. Elsewhere each logger is its
        # own run.
        self.shared = bool(os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"))
        self.run, self.id, self.offline_dir, self.prefix = None, None, None, prefix if self.shared else ""
        if self.shared:
            name = group = job_type = resume_id = None
            config = {k: v for k, v in config.items() if k != "phase"}  # one run holds every phase
        if resolve_mode(mode) == "disabled":
            return
        try:
            import wandb

            self.wandb = wandb
            if self.shared and _shared is not None:  # a later phase: what it settled (a trained teacher's path)
                self.run = _shared
                locked = getattr(self.run.config, "_locked", {})  # the sweep's parameters: theirs stand
                new = {k: v for k, v in config.items() if k not in locked and self.run.config.get(k) != v}
                self.run.config.update(new, allow_val_change=True)
            else:
                with _quiet():  # wandb's own log lines (and its service's) stay off the console
                    self.run = _init(wandb, resolve_mode(mode), project, name, config, group, job_type, resume_id, dir)
                _shared = self.run if self.shared else _shared
            self._axes()
            self.id, self.offline_dir = self.run.id, Path(self.run.sync_dir) if self.run.offline else None
        except Exception as e:
            warn(f"W&B could not start ({why(e)}); training goes on without it")
            self.run = None
        for ref in inputs:
            self.use_model(ref)

    def _axes(self):
        p = self.prefix
        self.run.define_metric(p + EPOCH)
        self.run.define_metric(p + STEP)
        self.run.define_metric(f"{p}batch/*", step_metric=p + STEP)
        for key in EPOCH_METRICS:  # summary="none": log_epoch writes the best epoch's values there instead
            self.run.define_metric(p + key, step_metric=p + EPOCH, summary="none")

    def _call(self, fn):
        try:
            if self.run is not None:
                fn()
        except Exception as e:
            warn(f"W&B call failed ({why(e)}); W&B logging is off for the rest of this run")
            self.run = None

    def _log(self, data, epoch=None):
        row = {self.prefix + k: v for k, v in data.items()}
        if epoch is not None:
            row[self.prefix + EPOCH] = epoch
        self.run.log(row)  # no step=: every chart has its own axis (define_metric), wandb's _step only counts

    def log(self, data, step=None):
        """A point of `data`; step: the epoch it belongs to."""
        self._call(lambda: self._log(data, step))

    def log_epoch(self, row, best):
        """One epoch's point, and the summary set to the `best` epoch's values (both with their axis key)."""

        def go():
            self._log(row)
            self.run.summary.update({self.prefix + k: v for k, v in best.items() if k != EPOCH})

        self._call(go)

    def log_step(self, step, data):
        """A per-step point (batch/<key>) on the global_step axis."""
        self._call(lambda: self._log({STEP: step, **{f"batch/{k}": v for k, v in data.items()}}))

    def log_images(self, paths, step=None):
        files = [Path(p) for p in paths if Path(p).is_file()]
        if files:
            self._call(lambda: self._log({f.stem: self.wandb.Image(str(f)) for f in files}, step))

    def log_table(self, key, columns, rows):
        """A wandb.Table; give numbers as numbers (W&B sorts and charts them), None where there is none."""
        self._call(lambda: self._log({key: self.wandb.Table(columns=list(columns), data=[list(r) for r in rows])}))

    def log_model(self, path, name, aliases, metadata=None):
        """A file as a version of model artifact `name` (wandb copies it now, so it may change afterwards)."""

        def go():
            artifact = self.wandb.Artifact(name, type="model", metadata=metadata or {})
            artifact.add_file(str(path), name=Path(path).name)
            self.run.log_artifact(artifact, aliases=list(aliases))

        self._call(go)

    def use_model(self, ref):
        """Declare artifact `ref` (PROJECT/NAME:ALIAS) this run's input. wandb refuses it offline (it resolves the
        name on the server), so an offline run only names it in its config; a failure here only warns."""
        if self.run is None or self.run.offline:
            return
        try:
            self.run.use_artifact(ref, type="model")
        except Exception as e:
            warn(f"W&B could not record {ref} as this run's input ({why(e)})")

    def finish(self, summary=None):
        """Write the summary (prefixed); finish the run unless it is the shared one (finish_process does)."""
        if summary:
            self._call(lambda: self.run.summary.update({self.prefix + k: v for k, v in summary.items()}))
        if not self.shared:
            self._call(lambda: self.run.finish())
        self.run = None


def _init(wandb, mode, project, name, config, group, job_type, resume_id, dir):
    """wandb.init as lab1 calls it. WANDB_DIR, when set, is where wandb keeps its files (else the run folder);
    WANDB_ENTITY and WANDB_TAGS are wandb's own settings and stand."""
    if os.environ.get("WANDB_DIR"):
        dir = os.environ["WANDB_DIR"]
    if dir:
        Path(dir).mkdir(parents=True, exist_ok=True)  # made first, or wandb warns; it gets wandb/
    return wandb.init(  # settings: W&B never holds training long
        project=project,
        name=name,
        config=config,
        group=group,
        job_type=job_type,
        mode=mode,
        dir=str(dir) if dir else None,
        id=resume_id,
        resume="allow" if resume_id else None,
        reinit="create_new",
        settings=wandb.Settings(
            init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 30)), finish_timeout=120, silent=True
        ),
    )


def finish_process():
    """Finish the sweep-agent run shared by this process's loggers, if one is open."""
    global _shared
    run, _shared = _shared, None
    if run is not None:
        try:
            run.finish()
        except Exception as e:
            warn(f"W&B could not finish its run ({why(e)})")


def _q(path):
    rel = os.path.relpath(path)
    return shlex.quote(str(path) if rel.startswith("..") else rel)


def _run_id(folder):
    """An offline run folder's run id, from its run-<id>.wandb (a resumed run's folder name ends in -1, -2 ...)."""
    return next((f.stem[4:] for f in Path(folder).glob("run-*.wandb")), Path(folder).name)


def sync_command(offline_dirs):
    """One `wandb sync` command for these offline run folders and every other folder of their run ids (a resumed
    run writes one per process). A wandb/ folder that holds nothing else is named whole, and several of them
    in sibling folders (a study's children, phase folders) become one glob."""
    by_root = {}
    for d in filter(None, offline_dirs):
        by_root.setdefault(Path(d).resolve().parent, set()).add(_run_id(d))
    if not by_root:
        return None
    whole, folders = [], []
    for root, ids in sorted(by_root.items()):
        runs = sorted(root.glob("offline-run-*"))
        mine = [f for f in runs if _run_id(f) in ids]
        if len(mine) == len(runs):
            whole.append(root)
        else:
            folders += mine
    by_parent = {}  # wandb/ folders of sibling folders (a study's children, phases): one glob
    for r in whole:
        by_parent.setdefault(r.parent.parent if r.name == "wandb" else r, []).append(r)
    args = [f"{_q(top)}/*/wandb" if len(rs) > 1 else _q(rs[0]) for top, rs in by_parent.items()]
    return "wandb sync " + " ".join(args + [_q(p) for p in folders])


_offline = []


def open_run(mode, project, name, config, run_dir, resume_id=None, **kw):
    """A WandbLogger whose offline files the closing `wandb sync` command names; None when W&B is disabled."""
    if mode == "disabled":
        return None
    logger = WandbLogger(mode, project, name, config, resume_id=resume_id, dir=run_dir, **kw)
    if logger.offline_dir:
        _offline.append(logger.offline_dir)
    return logger


def close_wandb():
    """End of the work: close a shared (sweep) W&B run, and print one command that uploads all offline runs."""
    finish_process()
    cmd = sync_command(_offline)
    _offline.clear()
    if cmd:
        print(f"W&B offline: upload later with `{cmd}`")


def _quiet():
    """While a W&B run starts, and in the service process it then starts, wandb's own output goes nowhere: with HOME
    or W&B's folders unwritable its service logged about 20 lines to the console. The user's WANDB_DEBUG or
    WANDB_CORE_DEBUG keeps it there."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("WANDB_DEBUG", "WANDB_CORE_DEBUG")):
        return contextlib.nullcontext()
    for name in ("wandb", "wandb.sdk"):  # its Python loggers: never Python's last-resort print to stderr
        logger = logging.getLogger(name)
        logger.propagate = False
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
    return _stderr_to_devnull()


@contextlib.contextmanager
def _stderr_to_devnull():
    """File descriptor 2 (inherited by the processes started meanwhile) and sys.stderr, to nowhere."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
