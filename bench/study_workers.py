"""Wall time of one study with 1 process (all threads), N workers (threads split between them) and
`--launcher local` (one submitit job per child, all at once, threads split between them).

    python bench/study_workers.py --data_root ../shared/data --workers 2 --repeats 2

Runs `exercise1.py --study mlp_depth` on a small MNIST subset in fresh folders, the settings taking turns, and
prints a Markdown table with the median wall time of each and its ratio to one process.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine  # noqa: E402

from cli import run_main  # noqa: E402
from flags import Parser, nonneg_int, pos_int  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("--data_root", default="./data", help="where MNIST lives (default: ./data)")
    p.add_argument("--workers", type=pos_int, default=2, help="workers of the second setting (default: 2)")
    p.add_argument("--repeats", type=pos_int, default=2, help="runs of each setting (default: 2)")
    p.add_argument("--subset", type=nonneg_int, default=5000, help="training examples (default: 5000)")
    p.add_argument("--epochs", type=pos_int, default=3, help="epochs per child (default: 3)")
    p.add_argument("--depths", type=pos_int, nargs="+", default=[2, 4, 8], help="depths (default: 2 4 8)")
    args = p.parse_args(argv)
    study = [
        "--study",
        "mlp_depth",
        "--depths",
        *map(str, args.depths),
        "--subset",
        str(args.subset),
        "--epochs",
        str(args.epochs),
        "--data_root",
        args.data_root,
        "--wandb",
        "disabled",
    ]
    settings = {
        "1 process": [],
        f"--workers {args.workers}": ["--workers", str(args.workers)],
        "--launcher local": ["--launcher", "local"],
    }
    times = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, extra in settings.items():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, str(ROOT / "exercise1.py"), *study, "--save_dir", tmp, *extra],
                    check=True,
                    capture_output=True,
                    cwd=ROOT,
                )
                times[name].append(time.perf_counter() - t0)
    print(machine("cpu"))
    print(f"| Setting | Wall time (s), median of {args.repeats} | Speed-up |\n|---|---|---|")
    base = statistics.median(times["1 process"])
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {base / statistics.median(ts):.2f}x |")
    return 0


if __name__ == "__main__":
    run_main(main)
