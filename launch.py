"""Running a study's children as a job array through submitit: one job per unfinished child, on SLURM (across
machines) or on submitit's local executor (for tests).

    python exercise1.py --study mlp_depth --seeds 0 1 2 --launcher slurm --slurm_partition gpu
    python exercise1.py --resume runs/mlp_depth --launcher slurm      # only the children not ended yet

Each job runs `python SCRIPT --resume STUDY_DIR` with LAB1_STUDY_CHILD=<child>: that process trains exactly
that child and exits (study.work). A child is assigned to one job, not claimed, so nothing needs a lock that
works across hosts. On preemption or near its time limit submitit calls the job's checkpoint(): the training
is stopped as by SIGTERM (lab1 saves a mid-epoch last.pt) and the job is requeued, to resume it. The submitting
process prints where each job logs (STUDY_DIR/jobs/), waits with a line per child that ends, and then writes
the study's report as without a launcher; --no_wait returns at once and prints the command for the report.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

import rules
from errors import Stopped, UsageError
from eta import duration
from files import read_json
from rundir import command
from study import ended

STOP_GRACE_S = 60  # a stopped child saves its last.pt in this time (SLURM signals 90 s before the end)


def check(cfg, flags, children, workers, device, studies):
    """Launcher flags that cannot work, refused in one line before anything is written: the flag rules (rules.py),
    then this machine. flags: the command's parsed flags (None: not given); children: how many the command's study
    has (0: a single run); studies: the flags that make one, for the message."""
    rules.check(rules.Settings(**{**flags, "workers": workers, "children": children, "studies": studies}), "launch")
    if cfg.launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise UsageError("--launcher slurm: sbatch and srun are not on this machine's PATH (run it on a SLURM node)")
    if cfg.launcher == "slurm" and cfg.slurm_gpus_per_task and device == "cpu":
        raise UsageError(
            "--launcher slurm: this machine has no GPU, so the study was set up for the CPU and its GPU jobs "
            "would not use theirs; submit from a GPU node (salloc), or give --slurm_gpus_per_task 0"
        )


def launcher(cfg, script, later):
    """The launcher study.work hands the pending children to (None without --launcher). later: the command that
    writes the report once the jobs are done (printed with --no_wait)."""
    if not cfg.launcher:
        return None
    return lambda pending, study_dir: run_jobs(cfg, Path(script).resolve(), pending, Path(study_dir).resolve(), later)


def run_jobs(cfg, script, pending, study_dir, later):
    """Submit one job per pending child; wait for them (True), or with --no_wait return at once (False)."""
    if not pending:
        return True
    names = [c.name for c in pending]
    jobs = submit(cfg, script, names, study_dir)
    for name, job in zip(names, jobs):
        print(f"{name}: job {job.job_id}, log {job.paths.stdout}", flush=True)
    if cfg.no_wait:
        print(f"{len(jobs)} jobs submitted; once they are done, write the report with: {later}", flush=True)
        return False
    wait(cfg, jobs, names, study_dir)
    return True


def executor(cfg, folder, name):
    """submitit's executor for the flags: SLURM's, or the local one (which sees every GPU of this machine)."""
    import submitit

    # A child longer than --slurm_time is requeued at every time limit: many times, not submitit's default 3.
    ex = submitit.AutoExecutor(folder=folder, cluster=cfg.launcher, slurm_max_num_timeout=100)
    params = {"name": name, "timeout_min": cfg.slurm_time, "nodes": 1, "tasks_per_node": 1}
    if cfg.launcher == "slurm":
        params |= {
            "cpus_per_task": cfg.slurm_cpus_per_task,
            "mem_gb": cfg.slurm_mem,
            "slurm_gpus_per_task": cfg.slurm_gpus_per_task,
            "slurm_array_parallelism": cfg.slurm_array_parallelism,
        }
        if cfg.slurm_partition:
            params["slurm_partition"] = cfg.slurm_partition
    else:
        import torch

        params["gpus_per_node"] = torch.cuda.device_count()
    ex.update_parameters(**params)
    return ex


def submit(cfg, script, names, study_dir):
    """One job per child name, as one array (SLURM) or one process each (local)."""
    import cloudpickle

    # The job pickles ChildJob by value: the job's Python then needs submitit, not this folder on its path.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    threads = cfg.slurm_cpus_per_task if cfg.launcher == "slurm" else max(1, (os.cpu_count() or 1) // len(names))
    ex = executor(cfg, study_dir / "jobs", f"lab1-{study_dir.name}")
    with _own_output(study_dir / "jobs" / "local_controllers.log") if cfg.launcher == "local" else nullcontext():
        return ex.map_array(ChildJob(script, study_dir, threads), names)


@contextmanager
def _own_output(path):
    """submitit's local controller processes inherit this process's stdout and stderr, and print a traceback
    there when cancelled (job.cancel() is a SIGINT): they are started with a log file of their own instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def wait(cfg, jobs, names, study_dir):
    """Until every job has ended: a line per child that ends (counts, and the time left at the pace so far). A
    stop (Ctrl-C, SIGTERM) cancels the jobs. Children whose job ended without them are one line at the end."""
    t0, seen, lost, total = time.monotonic(), {}, {}, len(names)
    try:
        while True:
            jobs_left = sum(not job.done() for job in jobs)
            for name, job in zip(names, jobs):
                if name in seen or name in lost:
                    continue
                job_done = job.done()  # first: a job that is done wrote its child's summary.json before
                if ended(study_dir / name):
                    seen[name] = read_json(study_dir / name / "summary.json").get("status")
                elif job_done:
                    lost[name] = job
                else:
                    continue
                failed = len(lost) + sum(s != "finished" for s in seen.values())
                done = len(seen) + len(lost)
                running = sum(n not in seen and n not in lost and not j.done() for n, j in zip(names, jobs))
                pace = (time.monotonic() - t0) / done
                left = f"; about {duration(pace * (total - done))} left" if done < total else ""
                what = seen.get(name) or f"lost: its job ended without it (log {job.paths.stderr})"
                print(f"[{done}/{total} done, {running} running, {failed} failed] {name} {what}{left}", flush=True)
            if not jobs_left and len(seen) + len(lost) == total:
                break
            time.sleep(2 if cfg.launcher == "local" else 20)  # sacct is asked at most this often
    except KeyboardInterrupt as e:
        for job in jobs:
            if not job.done():
                job.cancel(check=False)
        raise Stopped(
            getattr(e, "signum", signal.SIGINT),
            f"{str(e) or 'interrupted by SIGINT'}; cancelled the study's jobs (their children keep their last.pt; add "
            f"--launcher {cfg.launcher} below to submit them again)",
        ) from None
    if lost:
        raise UsageError(
            f"{len(lost)} of {total} jobs ended without their child ({', '.join(list(lost)[:3])}; logs in "
            f"{study_dir / 'jobs'}); continue with: {command('--resume', study_dir, '--launcher', cfg.launcher)}"
        )


class ChildJob(Checkpointable):
    """One job of the array, called with its child's name: `python SCRIPT --resume STUDY_DIR` training that child.

    It runs in the job's process on the node, unpickled by value: only the standard library and submitit there.
    """

    def __init__(self, script, study_dir, threads):
        self.script, self.study_dir, self.threads = str(script), str(study_dir), threads
        self.proc = None

    def __getstate__(self):
        return {**self.__dict__, "proc": None}  # a process is not carried over into a requeued job

    def __call__(self, child):
        cmd = [sys.executable, self.script, "--resume", self.study_dir]
        env = {**os.environ, "LAB1_STUDY_CHILD": child, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(self.threads)}
        print(f"job pid {os.getpid()}: LAB1_STUDY_CHILD={child} {shlex.join(cmd)}", flush=True)
        # SLURM sends the preemption signal (USR2) to every process of the job: the child must not die of it,
        # checkpoint() stops it with SIGTERM instead, which it survives by saving. Local jobs share the
        # terminal's process group: a Ctrl-C there reaches the child once, through this job, not twice (a second
        # signal would stop it at once, without saving its epoch so far).
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
        proc = self.proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_preemption, start_new_session=local)
        try:
            while proc.poll() is None:  # not wait(): checkpoint() runs in a signal handler meanwhile
                time.sleep(0.5)
        except BaseException:  # cancelled (SIGINT), or requeued by checkpoint(): the child has saved first
            _stop(proc)
            raise
        code = proc.returncode
        if code:
            raise RuntimeError(f"{child}: {shlex.join(cmd)} exited with {code}; the end of its log:\n{_tail()}")
        return child

    def checkpoint(self, child):
        """Preempted, or near the time limit: stop the child (it saves a mid-epoch last.pt), requeue this job."""
        if self.proc is not None and self.proc.poll() is None:
            print(f"job pid {os.getpid()}: preempted or out of time; stopping {child} to requeue it", flush=True)
            _stop(self.proc)
        self.proc = None
        return DelayedSubmission(self, child)


def _ignore_preemption():
    from submitit import JobEnvironment

    signal.signal(JobEnvironment._usr_sig(), signal.SIG_IGN)


def _stop(proc):
    """SIGTERM, then the time lab1 needs to save; SIGKILL if it has not ended by then (its epoch's last.pt stays).
    Reaps with waitpid: Popen.wait could block on a lock that the interrupted poll() holds."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while True:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by Popen already
            return
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.1)


def _tail(lines=20):
    """The last lines of this job's stderr log (the child writes there too)."""
    from submitit import JobEnvironment

    try:
        return "\n".join(JobEnvironment().paths.stderr.read_text(errors="replace").splitlines()[-lines:])
    except Exception as e:  # the failure is being reported: a log that cannot be read must not hide it
        return f"(its log could not be read: {type(e).__name__}: {e})"
