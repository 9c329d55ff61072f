"""Read an offline W&B run back from its transaction log (run-<id>.wandb), for tests.

wandb 0.31 has no Python reader (its datastore moved into wandb-core), and offline runs write no
files/wandb-summary.json, so this parses the log itself: the LevelDB log format (32 KiB blocks, records with a
7-byte header: crc32 u32, length u16, type u8 = full/first/middle/last) after a 7-byte ":W&B" header, each
record one wandb_internal_pb2.Record.
"""

import json
import struct
import time
from pathlib import Path

_BLOCK, _FULL, _FIRST, _LAST = 32768, 1, 2, 4


def records(path):
    """The protobuf records of one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 or len(chunk) < length:  # zero padding, or a record still being written
            break
        buf = chunk if kind in (_FULL, _FIRST) else buf + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def _put(out, items):
    """Apply summary/history/config items: a nested key (a media value's fields) builds nested dicts."""
    for item in items:
        *parents, last = [item.key] if item.key else list(item.nested_key)
        target = out
        for k in parents:
            target = target.setdefault(k, {})
        target[last] = json.loads(item.value_json)
    return out


def read_offline_run(path, wait=10.0):
    """An offline run folder (offline-run-...-ID) or its .wandb file -> what it recorded:
    {"id", "project", "entity", "name", "group", "job_type", "tags", "sweep_id", "config", "summary", "history"
    (rows), "history_keys", "metrics" ({name or glob: {"step_metric", "summary"}}: define_metric), "artifacts"
    (logged: {"name", "type", "aliases", "metadata", "files": {path: base64 md5}}), "used" (artifacts declared as
    inputs), "dir" (the run folder, for its media files), "exit_code" (None if the run never finished)}. Keys
    starting with "_" (wandb's own) are left out.

    wandb-core writes the log in the background: run.finish() can return before the file is complete, so this
    waits up to `wait` seconds for the run's exit record (a run that crashed has none: then it returns what
    is there).
    """
    path = Path(path)
    files = [path] if path.suffix == ".wandb" else sorted(path.glob("*.wandb"))
    if len(files) != 1:
        raise ValueError(f"{path}: expected one .wandb file, found {len(files)}")
    deadline = time.monotonic() + wait
    while True:
        out = {**_read(files[0]), "dir": files[0].parent}
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def _read(file):
    out = {
        "id": None,
        "project": None,
        "entity": None,
        "tags": [],
        "sweep_id": None,
        "name": None,
        "group": None,
        "job_type": None,
        "config": {},
        "summary": {},
        "history": [],
        "metrics": {},
        "artifacts": [],
        "used": [],
        "exit_code": None,
    }
    for r in records(file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(
                id=r.run.run_id,
                project=r.run.project,
                name=r.run.display_name,
                group=r.run.run_group,
                job_type=r.run.job_type,
                entity=r.run.entity,
                tags=list(r.run.tags),
                sweep_id=r.run.sweep_id,
            )
            _put(out["config"], r.run.config.update)
        elif kind == "config":
            _put(out["config"], r.config.update)
        elif kind == "summary":
            _put(out["summary"], r.summary.update)
        elif kind == "history":
            out["history"].append(_put({}, r.history.item))
        elif kind == "metric":
            summary = [f.name for f, on in r.metric.summary.ListFields() if on]
            name = r.metric.name or r.metric.glob_name
            out["metrics"][name] = {"step_metric": r.metric.step_metric, "summary": summary}
        elif kind == "artifact":
            a = r.artifact
            out["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": sorted(a.aliases),
                    "metadata": json.loads(a.metadata or "{}"),
                    "files": {e.path: e.digest for e in a.manifest.contents},
                }
            )
        elif kind == "use_artifact":
            out["used"].append(r.use_artifact.name)
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    out["config"] = {k: v for k, v in out["config"].items() if not k.startswith("_")}
    out["summary"] = {k: v for k, v in out["summary"].items() if not k.startswith("_")}
    out["history"] = [{k: v for k, v in row.items() if not k.startswith("_")} for row in out["history"]]
    out["history_keys"] = sorted({k for row in out["history"] for k in row})
    return out


def table(run, key):
    """A wandb.Table the run logged under `key` (its last value): {"columns": [...], "data": [[...], ...]}."""
    value = run["summary"][key]
    assert value["_type"] == "table-file", value
    return json.loads((Path(run["dir"]) / "files" / value["path"]).read_text())
