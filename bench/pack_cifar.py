"""Re-pack a CIFAR-10 ImageFolder copy into the original CIFAR-10 python format (to move it to a GPU machine).

    python bench/pack_cifar.py ../shared/data/cifar10-jpeg /tmp/cifar-packed
    tar -C /tmp/cifar-packed -cf - cifar-10-batches-py | xz -T0 -9 > cifar.tar.xz

The pixels are exactly those exercise1 decodes from the folder (same decoder, same cache), so
`--dataset cifar10 --data_root OUT` trains on the same images as `--dataset folder --data_root ROOT`; only
the order of the training examples differs (and with it the seeded validation split).
"""

import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli import run_main  # noqa: E402
from datasets import load_dataset  # noqa: E402
from errors import DataError  # noqa: E402
from flags import Parser  # noqa: E402


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("root", help="ImageFolder tree ROOT/{train,test}/<class>/* of 32x32 colour images")
    p.add_argument("out", help="folder to write cifar-10-batches-py/ into")
    args = p.parse_args(argv)
    try:
        ds = load_dataset("folder", args.root)
    except DataError as e:
        p.error(str(e))
    if tuple(ds.train_x.shape[1:]) != (3, 32, 32) or len(ds.classes) != 10:
        p.error(f"{args.root} is not a 10-class data set of 32x32 colour images")
    base = Path(args.out) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y):
        # CIFAR rows are 3072 bytes: the red plane, then green, then blue, i.e. (C, H, W) flattened.
        with open(base / name, "wb") as f:
            pickle.dump({b"data": x.reshape(len(x), -1).numpy(), b"labels": y.tolist()}, f)

    parts = np.array_split(np.arange(len(ds.train_y)), 5)
    for i, part in enumerate(parts, start=1):
        dump(f"data_batch_{i}", ds.train_x[part], ds.train_y[part])
    dump("test_batch", ds.test_x, ds.test_y)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in ds.classes]}, f)
    print(f"wrote {len(ds.train_y)} training and {len(ds.test_y)} test images to {base}")
    return 0


if __name__ == "__main__":
    run_main(main)
