"""Typed configuration: flat dataclasses, YAML in and out, `--set key=value` overrides.

A run's configuration has four parts: the family name, `data` (DataConfig),
`train` (TrainConfig) and `model` (the family's own dataclass). Each field
carries its help text and, where it matters, its allowed values or lower bound
in `metadata`, so the CLI, `genlab models` and validation all read one source.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genlab.errors import GenlabError


def opt(default, help: str, choices=None, min=None, max=None, above=None):
    """A dataclass field with help text and validation metadata: value >= min, <= max, > above."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = opt("digits", "data set: a name from `genlab datasets`, folder:PATH or text:STRING")
    data_dir: str | None = opt(None, "where to look for data files first (then $GENLAB_DATA, then the cache)")
    image_size: int = opt(0, "side of the square images the model sees; 0: the data set's own (28 for MNIST) or 32", min=0)
    channels: int = opt(0, "1 or 3 to force grey or colour; 0: the data set's own", min=0, max=3)
    flip: bool = opt(False, "random horizontal flips during training")
    binarize: bool = opt(False, "binary images: training batches drawn as x ~ Bernoulli(pixel) every time, "
                                "the test split binarised once with a fixed seed")
    download: bool = opt(True, "download missing files from the canonical source when online")


@dataclass
class TrainConfig:
    steps: int = opt(0, "optimizer steps to train for (0: use epochs, or the family's default)", min=0)
    epochs: int = opt(0, "passes over the training set (used when steps is 0)", min=0)
    batch_size: int = opt(32, "global batch size (split across processes under torchrun)", min=1)
    lr: float = opt(1e-3, "learning rate", above=0.0)
    optimizer: str = opt("adam", "optimizer", choices=["adam", "adamw"])
    betas: list[float] = opt([0.9, 0.999], "Adam betas")
    weight_decay: float = opt(0.0, "weight decay (decoupled for adamw)", min=0.0)
    grad_clip: float = opt(1.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps", min=0)
    lr_schedule: str = opt("constant", "after the warm-up: constant, or cosine decay to 0 at the last step",
                           choices=["constant", "cosine"])
    grad_accum: int = opt(1, "micro-batches per optimizer step", min=1)
    ema_decay: float = opt(0.0, "EMA decay of the weights used for sampling (0: no EMA)", min=0.0, max=1.0)
    precision: str = opt("auto", "fp32 (TF32 matmuls on CUDA), bf16 autocast, or auto: fp32 (bf16 was slower for the "
                                 "seed U-Net on an H100: 2,829 vs 3,629 img/s)", choices=["auto", "fp32", "bf16"])
    compile: bool = opt(False, "torch.compile the networks that training and sampling call")
    compile_mode: str = opt("auto", "torch.compile mode; auto: reduce-overhead (CUDA graphs) on CUDA, default on CPU",
                            choices=["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    device_data_mb: int = opt(4096, "hold the training split on the training device when it takes at most this "
                                    "many MiB (and num_workers is 0); else a DataLoader feeds it", min=0)
    deterministic: bool = opt(False, "deterministic kernels on CUDA (cuDNN, cuBLAS), so a resumed run matches bit "
                                     "for bit there too; slower")
    channels_last: bool = opt(False, "NHWC memory layout for convolutions (faster at power-of-two sizes)")
    num_workers: int = opt(0, "DataLoader worker processes", min=0)
    seed: int = opt(0, "random seed (data order, initialisation, noise)")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    log_every: int = opt(10, "steps between training-metric lines in metrics.jsonl", min=1)
    sample_every: int = opt(0, "steps between sample grids (0: about ten per run, at least 100 steps apart)",
                           min=0)
    sample_each_epoch: bool = opt(False, "also a sample grid at the end of every epoch")
    checkpoint_every: int = opt(0, "steps between checkpoints (0: about ten per run)", min=0)
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep", min=1)
    eval_every: int = opt(0, "steps between test-set evaluations (0: at the end only)", min=0)
    fid_every: int = opt(0, "steps between sample-quality checks during training (seed 001's fid; 0: off)", min=0)
    fid_n: int = opt(1000, "samples per sample-quality check", min=10)
    fid_features: str = opt("auto", "features for those checks: inception (FID), domain (an offline classifier) "
                                    "or auto", choices=["auto", "inception", "domain"])
    n_samples: int = opt(64, "images in each sample grid", min=1)
    final_eval_n: int = opt(1000, "test examples for the test pass and likelihood at the end of training (0: all)",
                            min=0)
    final_eval: str = opt("auto", "end-of-run work: auto uses 5 test examples per step (at least 16, at most "
                                  "final_eval_n) and a quick end for runs under 100 steps; full: the whole test "
                                  "set and every figure in full",
                          choices=["auto", "full"])
    progress: bool = opt(True, "show a progress bar")
    tracking: str = opt("none", "also log to tensorboard or wandb", choices=["none", "tensorboard", "wandb"])


SECTIONS = ("data", "train", "model")


@dataclass
class RunConfig:
    family: str
    data: DataConfig
    train: TrainConfig
    model: Any  # the family's config dataclass

    def to_dict(self) -> dict:
        return {"family": self.family, **{s: to_dict(getattr(self, s)) for s in SECTIONS}}


def to_dict(obj) -> dict:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def describe(cls) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_ += " {" + ", ".join(map(str, f.metadata["choices"])) + "}"
        rows.append((f.name, _type_name(hints[f.name]), default, help_))
    return rows


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0])
    if origin in (list, tuple):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def coerce(cls, name: str, value, where: str = ""):
    """Check `value` against field `name` of `cls`; return it in the field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    label = f"{where}{name}"
    if name not in fields:
        raise GenlabError(f"unknown option '{label}' (known: {', '.join(fields)})")
    f = fields[name]
    tp = typing.get_type_hints(cls)[name]
    value = _coerce_type(tp, value, label)
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise GenlabError(f"invalid value {value!r} for {label}: choose from {', '.join(map(str, meta['choices']))}")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if meta.get("min") is not None and item < meta["min"]:
                raise GenlabError(f"invalid value {value!r} for {label}: must be >= {meta['min']}")
            if meta.get("above") is not None and item <= meta["above"]:
                raise GenlabError(f"invalid value {value!r} for {label}: must be > {meta['above']}")
            if meta.get("max") is not None and item > meta["max"]:
                raise GenlabError(f"invalid value {value!r} for {label}: must be <= {meta['max']}")
    return value


def _coerce_type(tp, value, label):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce_type(inner, v, label) for v in value]
    if tp is bool:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, bool):
            return value
        raise GenlabError(f"invalid value {value!r} for {label}: expected true or false")
    if tp is int:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise GenlabError(f"invalid value {value!r} for {label}: expected an integer")
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise GenlabError(f"invalid value {value!r} for {label}: expected a finite number")
            return float(value)
        raise GenlabError(f"invalid value {value!r} for {label}: expected a number")
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise GenlabError(f"invalid value {value!r} for {label}: expected a string")
        return str(value)
    return value


def build(cls, values: dict, where: str = ""):
    """An instance of `cls` from defaults updated with `values`, every value checked."""
    obj = cls()
    for k, v in (values or {}).items():
        setattr(obj, k, coerce(cls, k, v, where))
    return obj


def update(obj, values: dict, where: str = ""):
    for k, v in (values or {}).items():
        setattr(obj, k, coerce(type(obj), k, v, where))
    return obj


def parse_sets(items: list[str], sections: dict) -> dict[str, dict]:
    """Turn ['model.dim=32', 'lr=2e-4'] into {'model': {'dim': '32'}, 'train': {'lr': '2e-4'}}.

    A bare key must name a field of exactly one section.
    """
    out: dict[str, dict] = {s: {} for s in sections}
    for item in items:
        if "=" not in item:
            raise GenlabError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if "." in key:
            section, name = key.split(".", 1)
            if section not in sections:
                raise GenlabError(f"unknown section '{section}' in --set {item!r} (known: {', '.join(sections)})")
        else:
            owners = [s for s, cls in sections.items() if name_in(cls, key)]
            if not owners:
                raise GenlabError(f"unknown option '{key}' in --set {item!r}")
            if len(owners) > 1:
                raise GenlabError(f"option '{key}' is ambiguous; write {' or '.join(f'{s}.{key}' for s in owners)}")
            section, name = owners[0], key
        out[section][name] = value
    return out


def name_in(cls, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise GenlabError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise GenlabError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        raise GenlabError(f"config file {p} is empty")
    if not isinstance(data, dict):
        raise GenlabError(f"config file {p} must hold a mapping")
    return data


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
