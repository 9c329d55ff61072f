"""Weights & Biases logging: choosing the mode, one failure-proof run wrapper, sweep-agent sharing, offline sync.

wandb is imported only when a logger is not disabled. A W&B problem prints one line starting with "warning: "
and makes that logger a no-op; training never stops for it. No printed line carries a key or a netrc line.
"""

import contextlib
import io
import logging
import os
import re
import shlex
import sys
from pathlib import Path

_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
_shared = None  # under a sweep agent: the one run every WandbLogger of this process logs to


def _warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _why(e):
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
        from wandb.sdk import wandb_setup
    except ImportError:  # no wandb: the logger says so
        return "offline"
    said = io.StringIO()
    try:  # wandb 0.31's own lookup for its configured server (WANDB_BASE_URL, `wandb login --host`):
        from wandb.sdk.lib import wbauth  # WANDB_API_KEY, identity token file, netrc, settings; no network

        host = wandb_setup.singleton().settings.base_url
        with contextlib.redirect_stderr(said):  # its netrc warnings may quote the file: say it our way
            auth = wbauth.authenticate_session(
                host=host, source="lab1", prompt=False, verify=False, update_session=False
            )
    except Exception as e:
        _warn(f"W&B credentials could not be read ({type(e).__name__}); logging offline")
        return "offline"
    if not auth and said.getvalue().strip():
        _warn("W&B could not use its saved credentials (check NETRC or ~/.netrc); logging offline")
    return "online" if auth else "offline"


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


class WandbLogger:
    """One W&B run whose calls never raise; under a sweep agent, a prefixed view of the process's shared run."""

    def __init__(self, mode, project, name, config, *, group=None, job_type=None, resume_id=None, dir=None, prefix=""):
        global _shared
        # `wandb agent` starts each trial with WANDB_SWEEP_ID and WANDB_RUN_ID set (wandb_agent.py); only there do
        # several loggers share one run, the agent's, holding every phase: keys prefixed, no phase name or job type,
        # no resume id of an earlier trial. Elsewhere each logger is its own run.
        self.shared = bool(os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"))
        self.run, self.id, self.offline_dir, self.prefix = None, None, None, prefix if self.shared else ""
        if self.shared:
            name = job_type = resume_id = None
        mode = resolve_mode(mode)
        if mode == "disabled":
            return
        try:
            import wandb

            self.wandb = wandb
            if self.shared and _shared is not None:
                self.run = _shared
            else:
                if dir:  # made first, or wandb warns; it gets wandb/
                    Path(dir).mkdir(parents=True, exist_ok=True)
                with _quiet():  # wandb's own log lines (and its service's) stay off the console
                    self.run = wandb.init(  # settings: W&B never holds training long
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
                            init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 30)),
                            finish_timeout=120,
                            silent=True,
                        ),
                    )
                _shared = self.run if self.shared else _shared
            if self.shared:  # each phase's charts run on its own epoch axis: the run's _step is not used
                self.run.define_metric(f"{prefix}epoch")
                self.run.define_metric(f"{prefix}*", step_metric=f"{prefix}epoch")
                if prefix.strip("/") and config:  # every phase's settings, beside the opener's at the top
                    self.run.config.update({prefix.strip("/"): config}, allow_val_change=True)
            self.id, self.offline_dir = self.run.id, Path(self.run.sync_dir) if self.run.offline else None
        except Exception as e:
            _warn(f"W&B could not start ({_why(e)}); training goes on without it")
            self.run = None

    def _call(self, fn):
        try:
            if self.run is not None:
                fn()
        except Exception as e:
            _warn(f"W&B call failed ({_why(e)}); W&B logging is off for the rest of this run")
            self.run = None

    def _log(self, data, step):
        row = {self.prefix + k: v for k, v in data.items()}
        if self.shared and step is not None:
            row[f"{self.prefix}epoch"], step = step, None
        self.run.log(row, step=step)

    def log(self, data, step=None):
        self._call(lambda: self._log(data, step))

    def log_images(self, paths, step=None):
        files = [Path(p) for p in paths if Path(p).is_file()]
        if files:
            self._call(lambda: self._log({f.stem: self.wandb.Image(str(f)) for f in files}, step))

    def log_table(self, key, columns, rows):
        self._call(
            lambda: self.run.log(
                {self.prefix + key: self.wandb.Table(columns=list(columns), data=[list(r) for r in rows])}
            )
        )

    def finish(self, summary=None):
        """Write the summary (prefixed); finish the run unless it is the shared one (finish_process does)."""
        if summary:
            self._call(lambda: self.run.summary.update({self.prefix + k: v for k, v in summary.items()}))
        if not self.shared:
            self._call(lambda: self.run.finish())
        self.run = None


def finish_process():
    """Finish the sweep-agent run shared by this process's loggers, if one is open."""
    global _shared
    run, _shared = _shared, None
    if run is not None:
        try:
            run.finish()
        except Exception as e:
            _warn(f"W&B could not finish its run ({_why(e)})")


def _q(path):
    rel = os.path.relpath(path)
    return shlex.quote(str(path) if rel.startswith("..") else rel)


def _run_id(folder):
    """An offline run folder's run id, from its run-<id>.wandb (a resumed run's folder name ends in -1, -2 ...)."""
    return next((f.stem[4:] for f in Path(folder).glob("run-*.wandb")), Path(folder).name)


def sync_command(offline_dirs):
    """One `wandb sync` command for these offline run folders and every other folder of their run ids (a resumed
    run writes one per process). A wandb/ folder that holds nothing else is named whole, and several of them
    side by side (a study's children, phase folders) become one glob."""
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
    args = [_q(p) for p in whole + folders]
    if len(whole) > 1 and all(r.name == "wandb" for r in whole) and len({r.parent.parent for r in whole}) == 1:
        args = [f"{_q(whole[0].parent.parent)}/*/wandb"] + [_q(p) for p in folders]
    return "wandb sync " + " ".join(args)


def wandb_record(rec):
    """metrics.jsonl record -> namespaced W&B keys (train/loss, val/acc, lr, grad/<layer>)."""
    out = {"epoch": rec["epoch"], "lr": rec["lr"], "epoch_time_s": rec["epoch_time_s"]}
    for k, v in rec.items():
        if v is None or k in out:
            continue
        if k == "grad_norm":
            out.update({f"grad/{layer}": g for layer, g in v.items()})
        elif k.startswith(("train_", "val_")):
            out["/".join(k.split("_", 1))] = v
        else:
            out[f"grad/{k}"] = v
    return out


_offline = []


def open_logger(cfg, run_dir, resume_id=None, name=None, **kw):
    if cfg.output.wandb == "disabled":
        return None
    logger = WandbLogger(
        cfg.output.wandb,
        cfg.output.wandb_project,
        name or run_dir.name,
        cfg.to_dict(),
        resume_id=resume_id,
        dir=run_dir,
        **kw,
    )
    if logger.offline_dir:
        _offline.append(logger.offline_dir)
    return logger


def finish_logger(logger, summary):
    if logger:
        logger.finish(summary)


def close_wandb():
    """End of the work: close a shared (sweep) W&B run, and print one command that uploads all offline runs."""
    finish_process()
    cmd = sync_command(_offline)
    _offline.clear()
    if cmd:
        print(f"W&B offline: upload later with `{cmd}`")
