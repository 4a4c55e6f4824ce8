"""Atomic checkpoints: every tensor in safetensors, everything else in JSON; nothing is pickled.

A checkpoint is a folder `checkpoints/step_00001234/` written under a temporary
name, flushed to disk and renamed into place, so a process killed at any moment
leaves either the previous checkpoint or the new one, never half of one.
`meta.json` records the size and SHA-256 of every tensor file, checked on load,
so a file damaged later (a full disk, a bad copy) is found; `latest_intact`
then falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genlab.errors import GenlabError

STEP_DIR = re.compile(r"^step_(\d{8})$")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], meta: dict, keep: int) -> Path:
    """Write checkpoint `step` under `root` atomically and keep only the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for name, sd in tensors.items():
        path = tmp / f"{name}.safetensors"
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(path))
        _fsync(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    write_json_atomic(tmp / "meta.json", {"step": step, **meta, "files": files})
    _fsync(tmp)
    if final.exists():  # a resumed run saving the same step again
        old = root / f".old-step_{step:08d}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync(root)
    for old in list_steps(root)[:-keep]:
        shutil.rmtree(root / f"step_{old:08d}", ignore_errors=True)
    return final


def list_steps(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file())


def latest(root: Path) -> Path | None:
    steps = list_steps(root)
    return root / f"step_{steps[-1]:08d}" if steps else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenlabError(f"checkpoint {path} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise GenlabError(f"checkpoint {path} is unreadable: meta.json is not an object")
    return meta


def verify_file(path: Path, record: dict | None) -> None:
    """Check a tensor file against its size and SHA-256 in meta.json (older checkpoints: that it parses)."""
    if record is None:
        return
    if not path.is_file():
        raise GenlabError(f"checkpoint file {path} is missing")
    if path.stat().st_size != record["bytes"]:
        raise GenlabError(f"checkpoint file {path} is damaged: {path.stat().st_size} bytes, {record['bytes']} written")
    if _sha256(path) != record["sha256"]:
        raise GenlabError(f"checkpoint file {path} is damaged: its SHA-256 differs from the one written")


def verify(path: Path) -> None:
    """Raise GenlabError unless every file of checkpoint `path` is as it was written."""
    meta = read_meta(path)
    records = meta.get("files")
    if records is None:  # written before checksums were recorded: check that each file parses
        for f in sorted(path.glob("*.safetensors")):
            load(path, names=[f.stem])
        return
    for name, record in records.items():
        verify_file(path / name, record)


def latest_intact(root: Path, warn=None, set_aside: bool = False) -> Path | None:
    """The newest checkpoint under `root` that verifies; each newer damaged one is reported with `warn`.

    With `set_aside` (a run about to continue) the damaged ones are renamed `.damaged-step_...`, so
    that they are neither kept in place of good ones nor taken for the latest again.
    """
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    damaged = []
    for step in reversed(list_steps(root)):
        path = root / f"step_{step:08d}"
        try:
            verify(path)
        except GenlabError as e:
            damaged.append((path.name, str(e)))
            continue
        for name, why in damaged:
            kept = ""
            if set_aside:
                os.replace(root / name, root / f".damaged-{name}")
                kept = f" (set aside as .damaged-{name})"
            warn(f"warning: checkpoint {name} is damaged ({why}){kept}; using {path.name}")
        return path
    if damaged:
        raise GenlabError(f"no intact checkpoint in {root}: " + "; ".join(why for _, why in damaged))
    return None


def load(path: Path, names: list[str] | None = None,
         verified: bool = False) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a checkpoint folder: ({name: state_dict}, meta). Damaged or corrupt files give a GenlabError.

    `verified`: the files were just checked (by `latest_intact`), so their checksums are not read again."""
    meta = read_meta(path)
    records = {} if verified else meta.get("files") or {}
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        if names is not None and f.stem not in names:
            continue
        verify_file(f, records.get(f.name))
        try:
            tensors[f.stem] = load_file(str(f))
        except (SafetensorError, OSError) as e:
            raise GenlabError(f"checkpoint file {f} is corrupt: {e}") from None
    return tensors, meta


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and plain JSON."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{key}"] = v
            else:
                plain.setdefault(str(pid), {})[key] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    for pid, st in meta["plain"].items():
        state.setdefault(int(pid), {}).update(st)
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise GenlabError(f"checkpoint optimizer state does not fit this model: {e}") from None


def load_state(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with a one-line error when the weights belong to another architecture."""
    missing, unexpected = set(module.state_dict()) - set(sd), set(sd) - set(module.state_dict())
    if missing or unexpected:
        raise GenlabError(f"{what} does not fit this model: {len(missing)} missing and "
                          f"{len(unexpected)} unexpected tensors (e.g. {sorted(missing | unexpected)[0]})")
    for k, v in module.state_dict().items():
        if v.shape != sd[k].shape:
            raise GenlabError(f"{what} does not fit this model: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    module.load_state_dict(sd)
