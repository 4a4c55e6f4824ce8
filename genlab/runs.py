"""Runs: building a configuration, training into a run directory, loading a run back.

A run directory holds config.yaml, metrics.jsonl, checkpoints/, samples/,
figures/ and report.html. A new run never reuses an existing directory.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genlab import checkpoint, parallel
from genlab.config import (SECTIONS, DataConfig, RunConfig, TrainConfig, build, dump_yaml, parse_sets, read_yaml,
                           update)
from genlab.data import kind_of, load_dataset
from genlab.errors import GenlabError, TrainingStopped
from genlab.family import family

# Options of a finished or interrupted run that `--resume` may change.
RESUMABLE = {"steps", "epochs", "device", "num_workers", "progress", "log_every", "sample_every", "channels_last",
             "checkpoint_every", "eval_every", "keep_checkpoints", "final_eval_n", "final_eval", "tracking", "compile",
             "compile_mode", "device_data_mb", "deterministic"}


def make_config(model: str | None = None, config: str | Path | None = None, sets: list[str] = (),
                preset: str | None = None, **options) -> RunConfig:
    """Defaults < family defaults < preset < YAML file < keyword options < `sets` ('section.key=value')."""
    from genlab import presets

    file_values = read_yaml(config) if config else {}
    name = model or file_values.get("family")
    if not name:
        raise GenlabError("name a model to train, e.g. genlab train ddpm (see genlab models)")
    fam = family(name)
    unknown = set(file_values) - {"family", *SECTIONS}
    if unknown:
        raise GenlabError(f"config file {config}: unknown section(s) {', '.join(sorted(unknown))}")
    recipe = presets.values(name, preset) if preset else {}
    unknown = set(recipe) - {"family", *SECTIONS}
    if unknown:
        raise GenlabError(f"preset {name}/{preset}: unknown section(s) {', '.join(sorted(unknown))}")
    data = build(DataConfig, fam.DATA_DEFAULTS, "data.")
    mcfg = fam.Config()
    sections = {"data": DataConfig, "train": TrainConfig, "model": fam.Config}
    given: dict[str, dict] = {s: {} for s in SECTIONS}
    for key, value in options.items():
        if value is None:
            continue
        owners = [s for s, cls in sections.items() if any(f == key for f in cls.__dataclass_fields__)]
        if not owners:
            raise GenlabError(f"unknown option '{key}'")
        given[owners[0]][key] = value
    explicit: dict[str, dict] = {s: {} for s in SECTIONS}
    for layer in (recipe, file_values, given, parse_sets(list(sets), sections)):
        for s in SECTIONS:
            vals = layer.get(s) or {}
            if s == "train" and ("steps" in vals) != ("epochs" in vals):
                # a length given one way replaces one given the other way by a lower layer
                explicit[s].pop("epochs" if "steps" in vals else "steps", None)
            explicit[s].update(vals)
    update(data, explicit["data"], "data.")
    # families that take both images and 2-D points have defaults for each kind
    kind = kind_of(data.dataset)
    train = build(TrainConfig, {**fam.TRAIN_DEFAULTS, **getattr(fam, "TRAIN_DEFAULTS_BY_KIND", {}).get(kind, {})},
                  "train.")
    update(mcfg, getattr(fam, "MODEL_DEFAULTS_BY_KIND", {}).get(kind, {}), "model.")
    if "epochs" in explicit["train"] and "steps" not in explicit["train"]:
        train.steps = 0  # asking for epochs replaces the family's default number of steps
    update(train, explicit["train"], "train.")
    update(mcfg, explicit["model"], "model.")
    cfg = RunConfig(name, data, train, mcfg)
    validate(cfg, fam)
    return cfg


def validate(cfg: RunConfig, fam) -> None:
    kind = kind_of(cfg.data.dataset)
    if fam.DATA_KIND != "any" and kind != fam.DATA_KIND:
        raise GenlabError(f"model '{cfg.family}' trains on {fam.DATA_KIND} data, but '{cfg.data.dataset}' is {kind} data")
    if not cfg.train.steps and not cfg.train.epochs:
        raise GenlabError("set either train.steps or train.epochs to a positive number")
    if hasattr(fam, "validate"):
        fam.validate(cfg.model, cfg.data)


def config_from_dict(d: dict, where: str) -> RunConfig:
    try:
        fam = family(d["family"])
        return RunConfig(d["family"], build(DataConfig, d.get("data"), "data."),
                         build(TrainConfig, d.get("train"), "train."), build(fam.Config, d.get("model"), "model."))
    except (KeyError, TypeError) as e:
        raise GenlabError(f"{where} is not a valid genlab config: {e}") from None


def read_run_config(run: Path) -> RunConfig:
    if not (run / "config.yaml").is_file():
        raise GenlabError(f"{run} is not a genlab run directory (no config.yaml)")
    return config_from_dict(read_yaml(run / "config.yaml"), str(run / "config.yaml"))


def prepare_data(cfg: RunConfig):
    """The run's data set at the model's size; with data.binarize, a fixed binary test split."""
    from genlab.data import binarize_fixed

    data = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.image_size, cfg.data.channels,
                        cfg.data.download, getattr(family(cfg.family), "IMAGE_SIZE", 32))
    if cfg.data.binarize:
        if data.kind != "image":
            raise GenlabError("data.binarize applies to images only")
        data.test = binarize_fixed(data.test)
    fam = family(cfg.family)
    return fam.prepare(data, cfg) if hasattr(fam, "prepare") else data


def default_run_dir(cfg: RunConfig) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.data.dataset.split("/")[-1])[:24]
    base = Path("runs") / f"{cfg.family}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(dump_yaml(cfg.to_dict()))
    tmp.replace(run_dir / "config.yaml")


def train(model: str | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          config: str | Path | None = None, preset: str | None = None, sets: list[str] = (), **options):
    """Train a model into a new run directory (or continue `resume`) and return it loaded.

    `options` are any field of the data, train or model config: genlab.train("ddpm", dataset="mnist", steps=500);
    `preset` a named recipe of the family (genlab.train("ddpm", preset="mnist")) that they override.
    """
    from genlab.device import backend_kind, configure, resolve_device
    from genlab.trainer import Trainer, drop_metrics

    if resume is not None:
        if preset or config:
            raise GenlabError("a resumed run keeps its own config.yaml: --preset and --config start new runs")
        run_dir = Path(resume)
        cfg = read_run_config(run_dir)
        extra = {k: v for k, v in options.items() if v is not None}
        for k in list(extra) + [s.split("=", 1)[0].split(".")[-1] for s in sets]:
            if k not in RESUMABLE:
                raise GenlabError(f"--resume cannot change '{k}' (only {', '.join(sorted(RESUMABLE))})")
        if "epochs" in extra and "steps" not in extra:
            extra["steps"] = 0
        update(cfg.train, extra, "train.")
        update(cfg.train, parse_sets(list(sets), {"train": TrainConfig})["train"], "train.")
        resume_from = checkpoint.latest_intact(run_dir / "checkpoints", set_aside=True)
        if resume_from is None and not hasattr(family(cfg.family), "first_stage"):
            # stopped (e.g. by SIGKILL) before its first checkpoint: the same run from step 0
            print(f"{run_dir} has no intact checkpoint yet: training it from step 0 with its config.yaml",
                  file=sys.stderr, flush=True)
    else:
        cfg = make_config(model, config, sets, preset, **options)
        run_dir = Path(out) if out else None
        if run_dir is not None and run_dir.exists():
            raise GenlabError(f"{run_dir} already exists; a new run never overwrites one (use --resume to continue it)")

    device = resolve_device(cfg.train.device)  # before joining a process group: a bad device is one line
    parallel.setup(backend_kind(cfg.train.device))
    created = started = False
    made = None
    try:
        configure(device, cfg.train.deterministic)
        fam = family(cfg.family)
        data = prepare_data(cfg)
        torch.manual_seed(cfg.train.seed)
        net = fam.build(cfg.model, data.shape, len(data.classes or [])).to(device)
        parallel.broadcast_parameters(net)
        if cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if resume is None:
            run_dir = parallel.broadcast_object(run_dir or default_run_dir(cfg))
            parallel.barrier()
            if parallel.is_main():
                # made whole under a temporary name and renamed into place: a run killed at any moment leaves
                # either no run directory or one with its config.yaml, which --resume takes
                made = outermost_missing(run_dir)
                staging = run_dir.with_name(f".{run_dir.name}.new-{os.getpid()}")
                try:
                    staging.mkdir(parents=True)
                    for sub in ("checkpoints", "samples", "figures"):
                        (staging / sub).mkdir()
                    write_config(staging, cfg)
                    os.rename(staging, run_dir)
                except OSError as e:
                    remove_new(staging, made)
                    raise GenlabError(f"cannot create the run directory {run_dir}: {e.strerror}") from None
                created = True
        if parallel.is_main() and resume is not None:  # a new run's config.yaml came with its directory
            write_config(run_dir, cfg)
        parallel.barrier()
        if hasattr(fam, "first_stage"):  # a model trained in two stages (ldm): the first, and what the second sees
            started = True  # from here a stopped first stage leaves its checkpoints to resume from
            data = fam.first_stage(net, data, cfg, run_dir, device)
        trainer = Trainer(cfg, run_dir, data, net, fam, device)
        if resume is not None and resume_from is None:
            drop_metrics(run_dir / "metrics.jsonl", lambda r: True)
        elif resume is not None:
            trainer.restore(resume_from, verified=True)
            if trainer.step >= trainer.total:
                if is_finished(run_dir, trainer.step, cfg.train.final_eval):
                    raise GenlabError(f"{run_dir} is already complete ({trainer.step} of {trainer.total} steps); "
                                      f"pass --steps N to train it further, or --final-eval full for the "
                                      f"complete end-of-run work")
                # the end-of-run work is owed (stopped during it, or asked for in full): its test rows are redone
                drop_metrics(run_dir / "metrics.jsonl", lambda r: r.get("split") == "test" and r["step"] == trainer.step)
        started = True
        trainer.fit()
        trainer.save()
        if parallel.is_main():
            try:
                finish(trainer)
            except KeyboardInterrupt:
                raise TrainingStopped(f"interrupted during the end-of-run work; genlab train --resume {run_dir} "
                                      f"completes it", 130) from None
    except BaseException:
        # failed while setting up, or before its first checkpoint (of any stage): leave no half-made run behind
        if created and (not started or not has_checkpoint(run_dir)):
            remove_new(run_dir, made)
        raise
    finally:
        parallel.barrier()
        parallel.teardown()
    return load(run_dir, device=str(device)) if parallel.is_main() else None


def remove_new(path: Path, made: Path) -> None:
    """Remove `path` and the folders made to hold it (runs/, from `made` inward) that it leaves empty."""
    shutil.rmtree(path, ignore_errors=True)
    for folder in path.absolute().parents:
        if not folder.is_relative_to(made.parent) or folder == made.parent:
            break
        try:
            folder.rmdir()
        except OSError:
            break


def outermost_missing(path: Path) -> Path:
    """The outermost folder of `path` that does not exist yet: the first one mkdir(parents=True) makes."""
    path = Path(path).absolute()
    while path.parent != path and not path.parent.exists():
        path = path.parent
    return path


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run, or a stage of it (ldm's autoencoder/), has written a checkpoint."""
    return any(checkpoint.latest(p) is not None for p in run_dir.glob("**/checkpoints"))


# finish() writes it with done: false when the end of the run starts and done: true when it is over
FINISHED = "finished.json"


def phase_log(what: str, t0: float) -> None:
    print(f"  {what}: {time.perf_counter() - t0:.1f} s", flush=True)


def finish(trainer) -> None:
    """The end of a run: test metrics, the final sample grid, every figure and the report, each timed."""
    from genlab.checkpoint import write_json_atomic
    from genlab.report import write_report
    from genlab.trainer import SHORT_RUN_GRID, SHORT_RUN_STEPS, evaluation_mode, read_metrics
    from genlab.viz import plot_curves

    run_dir, cfg, model = trainer.run_dir, trainer.cfg, trainer.model
    t_start = time.perf_counter()
    write_json_atomic(run_dir / FINISHED, {"step": trainer.step, "done": False})  # owed until the end
    n = trainer.final_eval_size()
    how = "all" if n == len(trainer.data.test) else f"{n} (--final-eval full for all {len(trainer.data.test)})"
    print(f"end of run: evaluating on {how} test examples, then samples and figures", flush=True)
    result = trainer.evaluate(final=True, log=phase_log)
    if trainer.features is not None:
        t0 = time.perf_counter()
        result.update(trainer.sample_quality())
        phase_log(f"sample quality of {cfg.train.fid_n} samples", t0)
    g = torch.Generator(trainer.device).manual_seed(cfg.train.seed + 4)
    short = trainer.short_run
    grid_n = min(cfg.train.n_samples, SHORT_RUN_GRID) if short else cfg.train.n_samples
    figure_kw = {"quick": True} if short and "quick" in inspect.signature(trainer.fam.figures).parameters else {}
    with evaluation_mode(model, trainer.ema), (model.quick() if short else contextlib.nullcontext("")) as note:
        if short:
            print(f"  a short run ({trainer.total} < {SHORT_RUN_STEPS} steps) gets a quick end: a {grid_n}-image grid"
                  + (", figures of fewer images" if figure_kw else "") + (f", {note}" if note else "")
                  + "; --final-eval full for the complete one", flush=True)
        if hasattr(trainer.fam, "final_metrics"):
            t0 = time.perf_counter()
            result.update(trainer.fam.final_metrics(model, trainer.data, cfg.model, g))
            phase_log("the family's final metrics", t0)
        if short:
            result["quick_end"] = 1
        trainer.log("test", result)
        t0 = time.perf_counter()
        trainer.sample_grid("final", grid_n)
        phase_log(f"final sample grid of {grid_n}", t0)
        t0 = time.perf_counter()
        trainer.fam.figures(model, trainer.data, run_dir / "figures", cfg.model, g, **figure_kw)
        phase_log("figures", t0)
    t0 = time.perf_counter()
    records = read_metrics(run_dir / "metrics.jsonl")
    losses = ["loss", "loss_d", "loss_g"]
    plot_curves(run_dir / "figures" / "loss.png", records, losses, title="training loss")
    skip = {"step", "split", "lr", "img_per_s", "elapsed", "nll_n", "test_n", "quick_end", "compile_s", "grad_norm",
            "k", *losses}
    # what was logged during training (eval rows are separate runs of `genlab eval`), at most six panels
    other = sorted({k for r in records if r.get("split") in ("train", "test") for k in r if k not in skip})
    if other:
        plot_curves(run_dir / "figures" / "curves.png", records, other[:6])
    if cfg.train.fid_every:
        from genlab.evaluation import fid_curve

        fid_curve(run_dir / "figures" / "fid.png", records)
    write_report(run_dir)
    phase_log("curves and report", t0)
    write_json_atomic(run_dir / FINISHED, {"step": trainer.step, "done": True, "final_eval": "quick" if short else "full",
                                           "end_of_run_s": round(time.perf_counter() - t_start, 2)})
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
    print(f"done: {run_dir} (test: {summary})\nreport: {run_dir / 'report.html'}")


def is_finished(run_dir: Path, step: int, final_eval: str = "auto") -> bool:
    """Whether the end-of-run work was done for the checkpoint at `step` (in full, when `final_eval` is full).

    Runs from before finished.json existed count as finished when their last step has a test record."""
    from genlab.trainer import read_metrics

    if not (run_dir / FINISHED).exists():
        return any(r.get("split") == "test" and r.get("step") == step for r in read_metrics(run_dir / "metrics.jsonl"))
    try:
        done = json.loads((run_dir / FINISHED).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(done, dict) or done.get("step") != step or not done.get("done"):
        return False
    return final_eval != "full" or done.get("final_eval") == "full"


def load(run: str | Path, device: str = "cpu", ema: bool = True, step: int | None = None):
    """A trained model from a run directory, in eval mode, with its EMA weights when it has them."""
    run = Path(run)
    cfg = read_run_config(run)
    root = run / "checkpoints"
    path = checkpoint.latest_intact(root) if step is None else root / f"step_{step:08d}"
    if path is None or not (path / "meta.json").is_file():
        raise GenlabError(f"{run} has no checkpoint{'' if step is None else f' at step {step}'}")
    tensors, meta = checkpoint.load(path, names=["model", "ema"], verified=step is None)  # latest_intact checked it
    fam = family(cfg.family)
    model = fam.build(cfg.model, meta["shape"], meta.get("num_classes", 0))
    checkpoint.load_state(model, tensors["model"], f"checkpoint {path}")
    if ema and "ema" in tensors:
        target = model.get_submodule(meta["ema_target"]) if meta.get("ema_target") else model
        sd = {k[len("module."):]: v for k, v in tensors["ema"].items() if k.startswith("module.")}
        checkpoint.load_state(target, sd, f"EMA weights of {path}")
    model.to(device).eval()
    model.run_dir, model.config, model.step, model.classes = run, cfg, meta["step"], meta.get("classes")
    model.data_shape = tuple(meta["shape"])
    return model


def sample(run_or_model, n: int = 64, seed: int = 0, device: str = "cpu", progress: bool = False,
           batch_size: int = 0, classes=None, guidance: float | None = None, **kwargs):
    """n samples from a run (images in [0, 1] as (n, C, H, W); 2-D points as (n, 2)).

    A class-conditional run draws `classes` (a class index or name, or n of them; default: each class in
    turn) with classifier-free guidance weight `guidance` (default: the run's). Drawn `batch_size` at a
    time (0: 256 on a CPU, 2048 on a GPU)."""
    from tqdm import tqdm

    model = run_or_model if isinstance(run_or_model, torch.nn.Module) else load(run_or_model, device=device)
    check_sampler(model, kwargs.get("sampler"), kwargs.get("steps"), kwargs.get("eta"), kwargs.get("spacing"))
    labels = class_labels(model, n, classes, guidance)
    g = torch.Generator(model.device).manual_seed(seed)
    batch_size = batch_size or (2048 if model.device.type == "cuda" else 256)
    out = []
    with tqdm(total=n, disable=not progress, unit="sample") as bar:
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            cond = {} if labels is None else {"classes": labels[i: i + k], "guidance": guidance}
            out.append(model.sample(k, generator=g, **cond, **kwargs))
            bar.update(k)
    return torch.cat(out)


def class_labels(model, n: int, classes=None, guidance: float | None = None) -> torch.Tensor | None:
    """The classes of n samples of a class-conditional model (None for other models), checked."""
    K = getattr(model, "num_classes", 0)
    if not K:
        if classes is not None or guidance is not None:
            name = model.config.family if hasattr(model, "config") else type(model).__name__
            raise GenlabError(f"model '{name}' is not class-conditional: --class and --guidance need a ddpm "
                              f"trained with --cond class")
        return None
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise GenlabError(f"--guidance must be a number >= 0, got {guidance}")
    names = [str(c) for c in (getattr(model, "classes", None) or range(K))]
    if isinstance(classes, str):
        if classes not in names and not classes.isdigit():
            raise GenlabError(f"unknown class '{classes}' (classes: {', '.join(names)})")
        classes = names.index(classes) if classes in names else int(classes)
    labels = model.class_labels(n, classes).cpu()
    if labels.min() < 0 or labels.max() >= K:
        raise GenlabError(f"--class must be between 0 and {K - 1} (classes: {', '.join(names)})")
    return labels.to(model.device)


def check_sampler(model, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                  spacing: str | None = None) -> None:
    """Refuse sampler options that the model's family does not take, before any sampling."""
    from genlab.family import FAMILIES, family
    from genlab.sampling import ETA_SAMPLERS, SPACINGS

    name = model.config.family if hasattr(model, "config") else type(model).__name__
    asked = [flag for flag, v in (("--sampler", sampler), ("--steps", steps), ("--eta", eta), ("--spacing", spacing))
             if v is not None]
    if asked and not model.samplers:
        takes = [f for f in FAMILIES if getattr(family(f), "SAMPLERS", ())]
        raise GenlabError(f"model '{name}' has one way to sample: {', '.join(asked)} apply to {', '.join(takes)}")
    if sampler and sampler not in model.samplers:
        raise GenlabError(f"unknown sampler '{sampler}' for {name} (available: {', '.join(model.samplers)})")
    chosen = sampler or (model.samplers[0] if model.samplers else None)
    if eta is not None and (chosen not in ETA_SAMPLERS or not 0 <= eta <= 1):
        raise GenlabError(f"--eta (between 0 and 1) applies to --sampler {' and '.join(ETA_SAMPLERS)} only")
    if spacing is not None and (spacing not in SPACINGS or chosen == "langevin"):
        raise GenlabError(f"--spacing takes one of {', '.join(SPACINGS)}, with a sampler other than langevin")
    if steps is not None and steps < 1:
        raise GenlabError(f"--steps must be a positive number, got {steps}")
    if steps is not None and hasattr(model, "levels"):
        model.levels(chosen, steps, spacing)  # a number of steps its levels cannot give is refused now


def evaluate(run: str | Path, metrics=("loss", "nll"), n: int = 0, device: str = "cpu", seed: int = 0,
             log: bool = True, k: int | None = None, features: str = "auto",
             samples: str | Path | torch.Tensor | None = None) -> dict[str, float]:
    """Metrics of a trained run, appended to its metrics.jsonl (split "eval") when `log`.

    loss and nll use n test examples (0: all); fid, kid, pr and is use n samples (0: 10,000), drawn
    from the model or given as an array / .npz file (key "samples", (N, C, H, W) in [0, 1]).
    """
    from genlab.evaluation import SAMPLE_METRICS, choose_features, log_stderr, sample_metrics
    from genlab.trainer import likelihood, test_averages

    known = {"loss", "nll", *SAMPLE_METRICS}
    if not metrics:
        raise GenlabError(f"--metrics names no metric (available: {', '.join(sorted(known))})")
    for m in metrics:
        if m not in known:
            raise GenlabError(f"unknown metric '{m}' (available: {', '.join(sorted(known))})")
    model = load(run, device=device)
    cfg = model.config
    data = prepare_data(cfg)
    wanted = [m for m in metrics if m in SAMPLE_METRICS]
    given = read_samples(samples, data.shape) if wanted and samples is not None else None  # checked before the work
    result: dict[str, float] = {}
    limit = len(data.test) if n == 0 else min(n, len(data.test))
    if "loss" in metrics:
        torch.manual_seed(seed)
        result.update(test_averages(model, data, device, limit))
    if "nll" in metrics:
        if not hasattr(model, "nll"):
            raise GenlabError(f"model '{cfg.family}' has no likelihood (nll)")
        if k and "k" not in inspect.signature(model.nll).parameters:
            raise GenlabError(f"--k applies to importance-weighted bounds; model '{cfg.family}' has none")
        result.update(likelihood(model, data, limit, torch.device(device), seed, **({"k": k} if k else {})))
    if wanted:
        x = sample(model, n or 10000, seed=seed, progress=True).cpu() if given is None else given
        result.update(sample_metrics(x, data, choose_features(features, data, device, log_stderr), wanted))
    if log:
        with open(Path(run) / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": model.step, "split": "eval", **{k_: v for k_, v in result.items()
                                                                        if not isinstance(v, float) or math.isfinite(v)}}) + "\n")
    return result


def read_samples(samples: str | Path | torch.Tensor, shape) -> torch.Tensor:
    """Samples given to `evaluate`: a tensor or an .npz file with key "samples", (N, *shape) floats."""
    if isinstance(samples, torch.Tensor):
        x = samples
    else:
        try:
            with np.load(samples, allow_pickle=False) as archive:
                if "samples" not in archive:
                    raise GenlabError(f"{samples} has no array 'samples' (it has: {', '.join(archive) or 'none'})")
                x = torch.from_numpy(archive["samples"]).float()
        except (OSError, ValueError) as e:
            reason = "not a NumPy .npz file" if isinstance(e, ValueError) else e
            raise GenlabError(f"cannot read samples from {samples}: {reason}") from None
    if tuple(x.shape[1:]) != tuple(shape) or len(x) == 0:
        raise GenlabError(f"samples of shape {tuple(x.shape)} do not match the data's (N, {', '.join(map(str, shape))})")
    return x


def read_image(path: str | Path, shape) -> torch.Tensor:
    """An image file as (1, C, H, W) floats in [0, 1], resized and centre-cropped to the model's shape."""
    from PIL import Image

    from genlab.data import _resize_crop

    C, H, W = shape
    try:
        with Image.open(path) as im:
            im = _resize_crop(im.convert("L" if C == 1 else "RGB"), H)
    except (OSError, ValueError) as e:
        raise GenlabError(f"cannot read image {path}: {e}") from None
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
    return (x[None, None] if C == 1 else x.permute(2, 0, 1)[None]).contiguous()


def file_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise GenlabError(f"cannot read image {path}: {e}") from None


def box_mask(text: str, shape) -> torch.Tensor:
    """A (1, 1, H, W) mask, 1 inside the box 'x,y,w,h' (pixels of the image as the model sees it)."""
    _, H, W = shape
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise GenlabError(f"--box expects x,y,w,h in pixels, got {text!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise GenlabError(f"--box {text} does not fit inside the model's {W}x{H} image")
    m = torch.zeros(1, 1, H, W)
    m[..., y: y + h, x: x + w] = 1
    return m


def inpaint(run: str | Path, image: str | Path | None = None, mask: str | Path | None = None, box: str | None = None,
            seed: int = 0, device: str = "cpu", n: int = 1, figure: str | Path | None = None,
            test_index: int | None = None, **options) -> torch.Tensor:
    """Fill the masked pixels of an image with a trained model; returns n completions, (n, C, H, W) in [0, 1].

    The mask is a file (white = missing) or a box 'x,y,w,h'; both refer to the image resized to the model's
    size. `test_index` K takes the run's K-th test image instead of a file. With `figure`, also writes the
    masked input, the completions and the input (the truth) in one row.
    `options` go to the family's inpainting: for ddpm (RePaint) steps, jump_length and resamplings."""
    if (mask is None) == (box is None):
        raise GenlabError("give exactly one of --mask FILE or --box x,y,w,h")
    if (image is None) == (test_index is None):
        raise GenlabError("give exactly one of --image FILE or --test-index K (the run's K-th test image)")
    model = load(run, device=device)
    if not hasattr(model, "inpaint") or len(model.data_shape) != 3:
        what = "was trained on 2-D points" if len(model.data_shape) != 3 else "cannot inpaint"
        raise GenlabError(f"model '{model.config.family}' {what}: inpainting needs an image model "
                          f"(ddpm, ncsn or inpaint-gan on images)")
    options = {k: v for k, v in options.items() if v is not None}
    takes = [k for k in inspect.signature(model.inpaint).parameters if k not in ("x", "m", "generator")]
    for k in options:
        if k not in takes:
            flags = ", ".join("--" + t.replace("_", "-") for t in takes if t not in ("lam", "paste"))
            raise GenlabError(f"--{k.replace('_', '-')} does not apply to {model.config.family} inpainting"
                              + (f" (it takes {flags})" if flags else ""))
    if any(options.get(k, 1) < 1 for k in ("steps", "jump_length", "resamplings")):
        raise GenlabError("--steps, --jump-length and --resamplings must be positive")
    if image is not None:
        x = read_image(image, model.data_shape).to(device)
    else:
        data = prepare_data(model.config)
        if not 0 <= test_index < len(data.test):
            raise GenlabError(f"--test-index must be between 0 and {len(data.test) - 1}, got {test_index}")
        x = data.floats("test")[test_index: test_index + 1].to(device)
    if mask:
        want = file_image_size(image) if image is not None else tuple(model.data_shape[:0:-1])
        got = file_image_size(mask)
        if got != want:
            raise GenlabError(f"the mask {mask} is {got[0]}x{got[1]} pixels but the image is {want[0]}x{want[1]}: "
                              f"a mask has the image's size (white = missing)")
        m = (read_image(mask, (1, *model.data_shape[1:])) > 0.5).float()
        if not m.any():
            raise GenlabError(f"the mask {mask} marks no missing pixels (white = missing, black = kept)")
    else:
        m = box_mask(box, model.data_shape)
    m = m.to(device)
    g = torch.Generator(device).manual_seed(seed)
    done = model.inpaint(x.expand(n, *x.shape[1:]), m.expand(n, *m.shape[1:]), generator=g, **options)
    if figure is not None:
        from genlab.viz import image_table

        image_table(figure, [torch.cat([x * (1 - m) + 0.5 * m, done, x])],
                    ["masked", *(f"completion {k + 1}" for k in range(n)), "input"])
    return done
