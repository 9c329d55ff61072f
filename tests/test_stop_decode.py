"""A stop while an image folder decodes (threads of a pool) never hangs: Ctrl-C / SIGTERM end the command with exit
130 / 143 and the one usual line, at whatever moment they come. Real processes, random moments, several times."""

import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, messages, write_folder


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """3,300 tiny images: a first decode that lasts about a second on two cores."""
    return write_folder(tmp_path_factory.mktemp("decode") / "imgs", classes=3, n_train=3000, n_test=300, size=8)


def _until_decoding(proc, timeout=120):
    """Reads the command's stderr until the decode's progress bar appears; returns what it read."""
    seen, deadline = "", time.time() + timeout
    while "decoding" not in seen:
        assert time.time() < deadline and proc.poll() is None, seen
        if select.select([proc.stderr], [], [], 0.5)[0]:
            seen += os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
    return seen


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_at_a_random_moment_of_the_first_decode_ends_in_one_line(many_images, tmp_path, sig, code):
    rng = random.Random(27)
    for attempt in range(3):
        for cache in many_images.glob(".lab1_cache_*"):  # every attempt decodes afresh
            cache.unlink()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "exercise1.py"), "--dataset", "folder", "--data_root", str(many_images)]
            + ["--model", "resnet8", "--epochs", "1", "--save_dir", str(tmp_path), "--wandb", "disabled"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        seen = _until_decoding(proc)
        delay = rng.uniform(0, 0.8) if attempt else 0.0
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"hung after {signal.Signals(sig).name} {delay:.2f} s into the decode")
        lines = messages(seen + err.decode(errors="replace"))
        assert proc.returncode == code, (delay, lines)
        assert len(lines) == 1 and lines[0].startswith(f"interrupted by {signal.Signals(sig).name}; "), (delay, lines)
        assert "Traceback" not in err.decode()


STRESS = """
import os, random, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
from imagefolder import decode_all
from errors import Stopped
paths = sorted(p for d in os.scandir(sys.argv[2]) for p in map(lambda e: e.path, os.scandir(d.path)))
rng, stopped = random.Random(1), 0
def handler(signum, frame):  # as run_main's: raise at once, outside a loop that defers
    raise Stopped(signum)
signal.signal(signal.SIGTERM, handler)
for attempt in range(int(sys.argv[3])):
    timer = threading.Timer(rng.uniform(0, 0.3), os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        decode_all(paths, "decoding")
        stopped -= 1  # not stopped inside: the signal comes in the sleep below
        time.sleep(1)
    except Stopped:
        stopped += 1
    timer.join()
print("stopped", stopped)
"""


def test_many_stops_inside_the_decode_loop_never_leave_a_lock_held(many_images):
    """In one process, SIGTERM from a timer at random moments of decode_all, 25 times: each ends it (Stopped) or
    comes after it; a raise inside the pool's locking would hang here (the timeout catches it)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    p = subprocess.run(
        [sys.executable, "-c", STRESS, str(ROOT), str(many_images / "train"), "25"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "PYTHONFAULTHANDLER": "1"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert int(p.stdout.split()[-1]) >= 5, p.stdout  # most of the stops came inside the decode
