"""Input networks a run depends on (finetune's --pretrained, exercise2's --teacher_ckpt): the fingerprint (sha256
of the file) a run records in its config.json when it starts, and the file a resume may read the network from.

A run also keeps the network itself in its folder (pretrained.pt, teacher.pth), written right after the folder is
made; a resume reads that copy. A run stopped before the copy was written reads the original file again, and
only if its sha256 is still the recorded one: a file replaced meanwhile (another network of the same architecture)
is refused in one line instead of giving another result. Run folders made before fingerprints were recorded read
the original, as they always did.
"""

import hashlib
from pathlib import Path

from errors import CheckpointError


def fingerprint(path):
    """The sha256 of a file, in hex."""
    if not Path(path).is_file():  # as checkpoint.load_file says it
        raise CheckpointError(f"checkpoint {path} does not exist")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or type(e).__name__})") from None
    return h.hexdigest()


def source(run_dir, kept, original, digest, flag):
    """The file a resumed run reads its input network from: the copy `kept` in run_dir, else `original` when its
    sha256 is `digest` (or no digest was recorded: a folder made before), else one line."""
    kept = Path(run_dir) / kept
    if kept.is_file() or not digest:
        return kept if kept.is_file() else original
    if not Path(original).is_file() or fingerprint(original) != digest:
        raise CheckpointError(
            f"{flag} {original} is not the file {run_dir} started from (it is gone, or its sha256 differs), and "
            f"the run keeps no copy of it (it stopped before writing {kept.name}): restore that file, or start a "
            "new run"
        )
    return original
