"""One training loop for every family.

Per step: a batch (this process's slice of the global batch), `model.train_step`
(which calls `ctx.minimize` once per optimizer), the EMA update, then the periodic
work: metrics to `metrics.jsonl`, sample grids, test evaluation and checkpoints.

A resumed run continues exactly: the batch order is a pure function of
(seed, epoch), and the checkpoint holds the step, the position in the epoch,
the RNG, optimizer, scheduler and EMA states; sampling and evaluation draw
their noise from their own generators so they never disturb training.
Weights are averaged with torch.optim.swa_utils.AveragedModel.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from genlab import checkpoint, parallel
from genlab.config import RunConfig
from genlab.data import Dataset, DeviceBatches, EpochBatches, InMemory, batches, data_bytes
from genlab.errors import GenlabError, TrainingStopped


# With final_eval=auto the end-of-run work is sized to the run: test examples scale with the steps
# (EXAMPLES_PER_STEP, at least SHORT_RUN_EXAMPLES, at most final_eval_n), and a run of fewer than
# SHORT_RUN_STEPS steps (a smoke run) gets a quick end: a small grid, figures of few images, short samplers.
SHORT_RUN_EXAMPLES, EXAMPLES_PER_STEP, SHORT_RUN_STEPS, SHORT_RUN_GRID = 16, 5, 100, 16


class NonFiniteLoss(Exception):
    def __init__(self, what: str, step: int):
        super().__init__(what)
        self.step = step


class GridInterrupted(Exception):
    """Raised by the stop-signal handler while a sample grid is being drawn during training."""


class EMA(AveragedModel):
    """An exponential moving average of a module's weights and buffers, with the usual warm-up.

    After n updates the decay is min(decay, (1 + n) / (10 + n)); the first update
    copies. The count is kept on the host as well as in the `n_averaged` buffer
    (which checkpoints carry), so an update never reads a value back from the
    device: AveragedModel's own update branches on its counter every call.
    """

    def __init__(self, target: torch.nn.Module, decay: float):
        super().__init__(target, use_buffers=True)
        self.decay = decay
        self.n_averaged = self.n_averaged.cpu()
        self.count = 0

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        ema = [*self.module.parameters(), *self.module.buffers()]
        src = [t.detach() for t in (*model.parameters(), *model.buffers())]
        floats = [(e, s) for e, s in zip(ema, src) if e.is_floating_point()]
        others = [(e, s) for e, s in zip(ema, src) if not e.is_floating_point()]  # e.g. BatchNorm's counters
        if self.count == 0:
            floats, others = [], floats + others
        if others:
            torch._foreach_copy_([e for e, _ in others], [s for _, s in others])
        if floats:
            n = self.count
            d = min(self.decay, (1 + n) / (10 + n))
            torch._foreach_lerp_([e for e, _ in floats], [s for _, s in floats], 1 - d)
        self.count += 1
        self.n_averaged += 1

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict, assign)
        self.count = int(self.n_averaged)  # once, on restore
        return out


def lr_factor(warmup: int, schedule: str, total: int):
    """Learning-rate multiplier after s steps: linear warm-up, then constant or cosine decay to 0."""

    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup))))
        return 1.0

    return factor


def split_batch(batch, k: int):
    if k == 1:
        return [batch]
    return list(zip(*[t.chunk(k) for t in batch]))


class StepContext:
    """What a family's `train_step` uses to take optimizer steps.

    Nothing here reads a value back to the host: the logged values stay tensors on
    the device, and a non-finite loss is recorded on the device (the first step it
    happened at, per optimizer) for the Trainer to check at its next log line or
    checkpoint. `step` is the number of optimizer steps taken before this one.
    """

    def __init__(self, optimizers, schedulers, params, grad_clip, grad_accum, autocast_dtype, device):
        self.optimizers, self.schedulers, self.params = optimizers, schedulers, params
        self.grad_clip, self.grad_accum = grad_clip, grad_accum
        self.autocast_dtype, self.device_type = autocast_dtype, device.type
        self.step = 0
        # per optimizer: the first step (1-based) whose loss was not finite, -1 while none was
        self.first_nonfinite = {name: torch.full((), -1, dtype=torch.long, device=device) for name in optimizers}

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def minimize(self, name: str, loss_fn, batch) -> dict[str, torch.Tensor]:
        """One optimizer step of `name` on loss_fn(batch)["loss"], over grad_accum micro-batches."""
        params = self.params[name]
        for p in params:
            p.grad = None
        chunks = split_batch(batch, self.grad_accum)
        logs: dict[str, torch.Tensor] = {}
        for chunk in chunks:
            with self.autocast():
                out = loss_fn(chunk)
            (out["loss"].float() / len(chunks)).backward()
            for k, v in out.items():
                v = v.detach().float() / len(chunks)
                logs[k] = logs[k] + v if k in logs else v
        first = self.first_nonfinite[name]  # the step, a Python number, enters as a scalar: no transfer
        first.copy_(torch.where((first < 0) & ~torch.isfinite(logs["loss"]), self.step + 1, first))
        parallel.all_reduce_mean_([p.grad for p in params if p.grad is not None])
        if self.grad_clip > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizers[name].step()
        self.schedulers[name].step()
        return logs

    def nonfinite_flags(self) -> torch.Tensor:
        """(optimizers,) float64 on the device: the first step whose loss was not finite, or -1."""
        return torch.stack(list(self.first_nonfinite.values())).to(torch.float64)

    def raise_if_nonfinite(self, flags: list[float]) -> None:
        for name, first in zip(self.first_nonfinite, flags):
            if first >= 0:
                raise NonFiniteLoss(f"loss of optimizer '{name}' is not finite (nan or inf)", int(first))


class MetricsLog:
    """Appends one JSON object per line; optional TensorBoard or wandb mirror."""

    def __init__(self, path: Path, tracking: str, run_dir: Path, config: dict):
        self.path = path
        self.mirror = None
        if tracking == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise GenlabError("tracking=tensorboard needs the tensorboard package: pip install 'genlab[tracking]'") from None
            self.mirror = SummaryWriter(str(run_dir / "tensorboard"))
        elif tracking == "wandb":
            try:
                import wandb
            except ImportError:
                raise GenlabError("tracking=wandb needs the wandb package: pip install 'genlab[tracking]'") from None
            self.mirror = wandb.init(project="genlab", name=run_dir.name, config=config, dir=str(run_dir))
        self.tracking = tracking

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracking == "tensorboard":
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    self.mirror.add_scalar(f"{record['split']}/{k}", v, record["step"])
        elif self.tracking == "wandb":
            self.mirror.log({f"{record['split']}/{k}": v for k, v in record.items() if k not in ("step", "split")},
                            step=record["step"])

    def close(self):
        if self.tracking == "tensorboard":
            self.mirror.close()
        elif self.tracking == "wandb":
            self.mirror.finish()


def read_metrics(path: Path) -> list[dict]:
    """The complete lines of a metrics.jsonl (a killed process may leave a partial last line)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def drop_metrics(path: Path, unwanted) -> None:
    """Rewrite metrics.jsonl atomically without the records for which `unwanted(record)` is true."""
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if not unwanted(r)]
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)


def trim_metrics(path: Path, step: int) -> None:
    """Drop records written after checkpoint `step`, which a resumed run will write again."""
    drop_metrics(path, lambda r: r.get("step", 0) > step)


@contextlib.contextmanager
def averaged_weights(model, ema: AveragedModel | None):
    """Temporarily put the EMA weights into the model (for sampling and evaluation)."""
    if ema is None:
        yield model
        return
    target = model.get_submodule(model.ema_target) if model.ema_target else model
    saved = {k: v.clone() for k, v in target.state_dict().items()}
    target.load_state_dict(ema.module.state_dict())
    try:
        yield model
    finally:
        target.load_state_dict(saved)


@contextlib.contextmanager
def evaluation_mode(model, ema: AveragedModel | None):
    """eval() and the EMA weights for the duration; the model's mode and weights come back after."""
    was_training = model.training
    model.eval()
    try:
        with averaged_weights(model, ema):
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def test_averages(model, data: Dataset, device, limit: int = 0) -> dict[str, float]:
    """`eval_step` averaged over the first `limit` test examples (0: all), weighted by batch size."""
    totals, n = {}, 0
    limit = limit or len(data.test)
    for batch in batches(data, "test", 256):
        batch = tuple(t[: limit - n].to(device) for t in batch)
        for k, v in model.eval_step(batch).items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(batch[0])
        n += len(batch[0])
        if n >= limit:
            break
    return {k: v / n for k, v in totals.items()}


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, data: Dataset, model, fam, device: torch.device):
        self.cfg, self.run_dir, self.data, self.model, self.fam, self.device = cfg, run_dir, data, model, fam, device
        self.images = data.images or data  # what samples are compared with (latent data: the images they encode)
        tc = cfg.train
        self.main = parallel.is_main()
        n_batches = len(data.train) // tc.batch_size
        self.total = tc.steps or tc.epochs * n_batches
        # about ten grids a run, none closer than 100 steps: a short run draws only its final grid
        self.sample_every = tc.sample_every or (0 if tc.sample_each_epoch else max(100, self.total // 10))
        self.checkpoint_every = tc.checkpoint_every or max(1, self.total // 10)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.elapsed = self.paused = 0.0

        self.optimizers, self.schedulers = {}, {}
        groups = model.optimizer_groups()
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        for name, params in groups.items():
            kw = {"fused": True} if device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params) else {}
            self.optimizers[name] = opt_cls(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, **kw)
            self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers[name], lr_factor(tc.warmup_steps, tc.lr_schedule, self.total))
        # bf16 autocast only when asked: slower than fp32 for the seed U-Net on an H100 (issue 16's measurements)
        autocast = torch.bfloat16 if tc.precision == "bf16" else None
        self.ctx = StepContext(self.optimizers, self.schedulers, groups, tc.grad_clip, tc.grad_accum, autocast, device)
        if tc.batch_size % (tc.grad_accum * parallel.world()):
            raise GenlabError(f"batch size {tc.batch_size} must be divisible by grad_accum x processes "
                              f"({tc.grad_accum} x {parallel.world()})")

        self.ema = None
        if tc.ema_decay > 0:
            target = model.get_submodule(model.ema_target) if model.ema_target else model
            self.ema = EMA(target, tc.ema_decay)
        self.compile_mode = None
        if tc.compile:  # after the EMA copy, which must stay a plain module
            self.compile_mode = tc.compile_mode if tc.compile_mode != "auto" else (
                "reduce-overhead" if device.type == "cuda" else "default")
            for net in model.networks():
                net.compile(mode=self.compile_mode)
        self.compile_s = None
        self.log_once: dict[str, float] = {}  # values for the next training log line only

        self.sampler = EpochBatches(len(data.train), tc.batch_size, tc.seed, parallel.rank(), parallel.world())
        if tc.num_workers == 0 and data_bytes(data) <= tc.device_data_mb * 2 ** 20:
            # the training split lives on the device; a batch is one indexing operation there
            self.loader = DeviceBatches(data, self.sampler, device)
        else:
            # its own generator: a DataLoader otherwise draws a worker seed from the global RNG at every epoch
            self.loader = torch.utils.data.DataLoader(InMemory(data, "train"), batch_sampler=self.sampler,
                                                      collate_fn=_identity, num_workers=tc.num_workers,
                                                      pin_memory=device.type == "cuda",
                                                      generator=torch.Generator().manual_seed(tc.seed))
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", tc.tracking, run_dir, cfg.to_dict()) if self.main else None
        self.stop_signal = None
        self.grid_in_progress = False  # a stop signal abandons a grid being drawn during training
        self.features = None
        if tc.fid_every and self.main:
            from genlab.evaluation import choose_features, log_stderr, reference_features

            self.features = choose_features(tc.fid_features, self.images, device, log_stderr)
            reference_features(self.features, self.images)  # computed (or read) now, not in the middle of training

    # -- state -----------------------------------------------------------------

    def state(self) -> tuple[dict, dict]:
        tensors = {"model": self.model.state_dict()}
        meta = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "elapsed": self.elapsed,
                "family": self.cfg.family, "shape": list(self.images.shape),
                "num_classes": len(self.data.classes or []), "classes": self.data.classes,
                "ema_target": self.model.ema_target if self.ema else None,
                "optimizers": {}, "schedulers": {}}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        for name, opt in self.optimizers.items():
            tensors[f"optim_{name}"], meta["optimizers"][name] = checkpoint.optimizer_state(opt)
            meta["schedulers"][name] = {k: v for k, v in self.schedulers[name].state_dict().items() if k != "lr_lambdas"}
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["rng"] = rng
        return tensors, meta

    def check_finite(self) -> None:
        """Stop if a loss so far, or a weight now, is not finite: what is saved after this is good.

        One read from the device for all of it."""
        params = [p.detach() for group in self.ctx.params.values() for p in group]
        weights_bad = (~torch.stack([p.isfinite().all() for p in params]).all()).to(torch.float64).reshape(1)
        state = torch.cat([self.ctx.nonfinite_flags(), weights_bad])
        parallel.all_reduce_max_(state)  # every process stops at the same step
        *flags, bad = state.tolist()
        self.ctx.raise_if_nonfinite(flags)
        if bad:
            raise NonFiniteLoss("the weights are not finite", self.step)

    def save(self) -> None:
        self.check_finite()
        if self.main:
            tensors, meta = self.state()
            checkpoint.save(self.run_dir / "checkpoints", self.step, tensors, meta, self.cfg.train.keep_checkpoints)
        parallel.barrier()

    def restore(self, path: Path, verified: bool = False) -> None:
        """Continue from checkpoint `path` (`verified`: its files were just checked, by latest_intact)."""
        tensors, meta = checkpoint.load(path, verified=verified)
        checkpoint.load_state(self.model, tensors["model"], f"checkpoint {path}")
        if self.ema is not None:
            if "ema" not in tensors:
                raise GenlabError(f"checkpoint {path} has no EMA weights but the config asks for them")
            self.ema.load_state_dict(tensors["ema"])
        for name, opt in self.optimizers.items():
            if f"optim_{name}" not in tensors and meta["optimizers"].get(name) is None:
                raise GenlabError(f"checkpoint {path} has no state for optimizer '{name}'")
            checkpoint.restore_optimizer(opt, tensors.get(f"optim_{name}", {}), meta["optimizers"][name])
            self.schedulers[name].load_state_dict({**meta["schedulers"][name], "lr_lambdas": [None]})
        torch.set_rng_state(tensors["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in tensors["rng"]:
            torch.cuda.set_rng_state(tensors["rng"]["cuda"], self.device)
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        self.elapsed = meta.get("elapsed", 0.0)
        if self.main:
            trim_metrics(self.run_dir / "metrics.jsonl", self.step)

    # -- periodic work -----------------------------------------------------------

    def sample_grid(self, name: str, n: int = 0) -> Path:
        from genlab.viz import save_sample_file

        g = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 1)  # the same noise every time
        during = {} if name == "final" else self.model.preview_sampler  # the final grid: the family's own sampler
        with evaluation_mode(self.model, self.ema):
            x = self.model.preview(n or self.cfg.train.n_samples, g, self.data, **during)
        path = self.run_dir / "samples" / f"{name}.png"
        save_sample_file(path, x)
        return path

    def interruptible_grid(self, name: str) -> None:
        """A grid during training that a stop signal abandons (the stop itself follows after the step)."""
        self.grid_in_progress = True
        try:
            self.sample_grid(name)
        except GridInterrupted:
            print(f"{signal.Signals(self.stop_signal).name}: the sample grid {name} was abandoned",
                  file=sys.stderr, flush=True)
        finally:
            self.grid_in_progress = False

    def final_eval_size(self) -> int:
        """Test examples for the end-of-run test pass and likelihood (see TrainConfig.final_eval)."""
        n_test = len(self.data.test)
        if self.cfg.train.final_eval == "full":
            return n_test
        n = min(n_test, self.cfg.train.final_eval_n or n_test)
        return min(n, max(SHORT_RUN_EXAMPLES, EXAMPLES_PER_STEP * self.total))

    @property
    def short_run(self) -> bool:
        return self.cfg.train.final_eval == "auto" and self.total < SHORT_RUN_STEPS

    @torch.no_grad()
    def evaluate(self, final: bool = False, log=None) -> dict[str, float]:
        """Average `eval_step` over the test set (with the EMA weights); at the end, over final_eval_size()
        examples, plus the NLL on as many. `log(line)` hears what each part did and how long it took."""
        devices = [self.device] if self.device.type == "cuda" else []
        limit = self.final_eval_size() if final else 0
        with evaluation_mode(self.model, self.ema), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.train.seed + 2)  # the same evaluation noise every time
            t0 = time.perf_counter()
            result = test_averages(self.model, self.data, self.device, limit)
            result["test_n"] = limit or len(self.data.test)
            if log:
                log(f"test pass on {result['test_n']} of {len(self.data.test)} test examples", t0)
            if final and hasattr(self.model, "nll"):
                t0 = time.perf_counter()
                result.update(likelihood(self.model, self.data, limit, self.device, self.cfg.train.seed + 3))
                if log:
                    log(f"likelihood of {result['nll_n']} test examples", t0)
        return result

    @torch.no_grad()
    def sample_quality(self) -> dict[str, float]:
        """FID (or the domain distance) of fid_n samples drawn with the same noise every time."""
        from genlab.evaluation import sample_metrics

        g = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 5)
        with evaluation_mode(self.model, self.ema):
            n = self.cfg.train.fid_n
            x = torch.cat([self.model.sample(min(250, n - i), generator=g).cpu() for i in range(0, n, 250)])
        return sample_metrics(x, self.images, self.features, which=("fid",))

    def log(self, split: str, values: dict) -> None:
        if self.main:
            self.metrics.write({"step": self.step, "split": split, **{k: _round(v) for k, v in values.items()}})

    # -- the loop ------------------------------------------------------------------

    def fit(self) -> None:
        from tqdm import tqdm

        tc = self.cfg.train
        model, device = self.model, self.device
        model.train()
        bar = tqdm(total=self.total, initial=self.step, disable=not (tc.progress and self.main), unit="step",
                   dynamic_ncols=True, file=sys.stderr, desc=f"{self.cfg.family}")
        acc: dict[str, torch.Tensor] = {}
        acc_n, t_last, seen = 0, time.perf_counter(), 0
        old_handlers = self._install_signals()
        try:
            while self.step < self.total:
                self.sampler.set_position(self.epoch, self.batch_in_epoch)
                for batch in self.loader:
                    batch = [t.to(device, non_blocking=True) for t in batch]
                    images = [0] + list(range(2, len(batch)))  # batch = (x, labels[, x of the second domain])
                    for i in images:
                        batch[i] = self.augment(batch[i])
                    x = batch[0]
                    self.ctx.step = self.step
                    if self.compile_mode in ("reduce-overhead", "max-autotune"):
                        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be reused
                    t_step = time.perf_counter() if self.compile_mode and self.compile_s is None else None
                    logs = model.train_step(tuple(batch), self.ctx)
                    if t_step is not None:  # the first step compiles: its time, once, in the log
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        self.compile_s = time.perf_counter() - t_step
                        if self.main:
                            print(f"torch.compile ({self.compile_mode}): the first training step took "
                                  f"{self.compile_s:.1f} s", file=sys.stderr, flush=True)
                        self.log_once["compile_s"] = self.compile_s
                    if self.ema is not None:
                        self.ema.update_parameters(model.get_submodule(model.ema_target) if model.ema_target else model)
                    self.step += 1
                    self.batch_in_epoch += 1
                    seen += len(x) * parallel.world()
                    for k, v in logs.items():  # summed on the device; read once per log line
                        acc[k] = acc[k] + v if k in acc else v
                    acc_n += 1
                    bar.update(1)
                    if self.step % tc.log_every == 0 or self.step == self.total:
                        means = self._read_means(acc, acc_n)  # waits for the device: the time is taken after
                        now = time.perf_counter()
                        interval = max(now - t_last - self.paused, 1e-9)
                        self.elapsed += interval
                        self.log("train", {**means, "lr": self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"],
                                           "img_per_s": seen / interval, "elapsed": self.elapsed, **self.log_once})
                        self.log_once = {}
                        bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:3]})
                        acc, acc_n, t_last, seen, self.paused = {}, 0, now, 0, 0.0
                    self._periodic()
                    # under torchrun agreeing on a stop is a collective: once per log line, not every step
                    if parallel.world() == 1 or self.step % tc.log_every == 0:
                        if parallel.any_flag(self.stop_signal is not None):
                            self.save()
                            code = 130 if self.stop_signal == signal.SIGINT else 143
                            raise TrainingStopped(f"stopped by {signal.Signals(self.stop_signal).name} at step "
                                                  f"{self.step}; checkpoint saved; continue with: "
                                                  f"genlab train --resume {self.run_dir}", code)
                    if self.step >= self.total:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if tc.sample_each_epoch and self.main:
                        t0 = time.perf_counter()
                        self.interruptible_grid(f"epoch_{self.epoch:04d}")
                        self.paused += time.perf_counter() - t0
            self.check_finite()
        except NonFiniteLoss as e:
            raise TrainingStopped(self._nonfinite_message(str(e), e.step), 1) from None
        finally:
            bar.close()
            self._restore_signals(old_handlers)
        if self.main:
            self.metrics.close()

    def _read_means(self, acc: dict, n: int) -> dict[str, float]:
        """The interval's means as floats, after checking the losses were finite: one read from the device."""
        vals = [torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in acc.values()]
        means = torch.stack(vals) / n if vals else torch.zeros(0, dtype=torch.float64, device=self.device)
        flags = self.ctx.nonfinite_flags()
        parallel.all_reduce_mean_([means])  # on the device: NCCL reduces GPU tensors, gloo CPU ones
        parallel.all_reduce_max_(flags)  # a non-finite loss on any process stops them all, at the same step
        *values, = torch.cat([means, flags]).tolist()
        self.ctx.raise_if_nonfinite(values[len(acc):])
        return dict(zip(acc, values[: len(acc)]))

    def augment(self, x):
        """Dynamic binarisation, random flips and the memory layout of a training batch."""
        tc = self.cfg.train
        image = self.data.kind == "image"  # not 2-D points or latent codes, which are not binarised or flipped
        if self.cfg.data.binarize and image:  # a fresh binary image every time
            x = (parallel.rand_like(x) < x).to(x.dtype)
        if self.cfg.data.flip and image:
            flip = parallel.rand_like(x[:, 0, 0, 0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if tc.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _periodic(self):
        """Sample grids, test evaluation and checkpoints; their time is not counted as training time."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        sample = self.sample_every and self.step % self.sample_every == 0 and self.step < self.total
        evaluate = tc.eval_every and self.step % tc.eval_every == 0 and self.step < self.total
        quality = tc.fid_every and self.step % tc.fid_every == 0 and self.step < self.total
        if (sample or evaluate or quality) and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued training work is training time, not a pause
            t0 = time.perf_counter()
        if sample and self.main:
            self.interruptible_grid(f"step_{self.step:08d}")
        if evaluate and self.main:
            self.log("test", self.evaluate())
        if quality and self.main:
            self.log("test", self.sample_quality())
        if sample or evaluate or quality:
            parallel.barrier()
        if self.step % self.checkpoint_every == 0 and self.step < self.total:
            self.save()
        self.paused += time.perf_counter() - t0

    def _nonfinite_message(self, what: str, step: int) -> str:
        last = checkpoint.latest(self.run_dir / "checkpoints")
        kept = (f"the last good checkpoint ({last.name}) is kept; genlab train --resume {self.run_dir} continues "
                f"from it" if last else "no checkpoint was written yet, so the run directory is removed")
        return (f"{what} at step {step}; training stopped and {kept}. "
                f"Try a lower learning rate (--lr) or gradient clipping (--set train.grad_clip=1).")

    def _install_signals(self):
        def handler(signum, frame):
            self.stop_signal = signum
            if self.grid_in_progress:  # minutes of sampling are not worth waiting for
                self.grid_in_progress = False
                raise GridInterrupted

        try:
            return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (e.g. called from a notebook's worker thread)
            return {}

    def _restore_signals(self, old):
        for s, h in old.items():
            signal.signal(s, h)


def _identity(batch):
    return batch


def _round(v):
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


@torch.no_grad()
def likelihood(model, data: Dataset, n: int, device, seed: int, **kwargs) -> dict[str, float]:
    """NLL of up to n test examples in nats per example and bits per dimension."""
    g = torch.Generator(device).manual_seed(seed)
    total, count = 0.0, 0
    limit = len(data.test) if n == 0 else min(n, len(data.test))
    for x, *_ in batches(data, "test", 250):
        x = x[: limit - count].to(device)
        total += float(model.nll(x, generator=g, **kwargs).sum())
        count += len(x)
        if count >= limit:
            break
    nats = total / count
    out = {"nll_nats": nats, "nll_n": count, **kwargs}
    if data.kind == "image":
        out["bpd"] = nats / (math.prod(data.shape) * math.log(2))
    return out
