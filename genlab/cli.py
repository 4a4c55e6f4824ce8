"""The `genlab` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from genlab.config import DataConfig, TrainConfig, describe, read_yaml
from genlab.errors import GenlabError, TrainingStopped

# The flags every `genlab train` shows first (SPEC S2); every other config field is a flag too.
MAIN_FLAGS = ["dataset", "data_dir", "steps", "epochs", "batch_size", "lr", "seed", "device", "sample_every"]


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise GenlabError(f"{self.prog}: {message}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    """A default as it is typed on the command line (lists comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _add_fields(group, rows, defaults: dict, taken: set[str]) -> None:
    """One flag per config field (rows from `describe`); a name already taken stays reachable by --set."""
    for name, type_name, default, help_ in rows:
        if name in taken:
            continue
        taken.add(name)
        default = defaults.get(name, default)
        shown = _shown(default)
        group.add_argument(_flag(name), dest=name, default=argparse.SUPPRESS, metavar=type_name.upper(),
                           help=f"{help_} (default: {shown})")


def train_parser(model: str | None) -> Parser:
    from genlab.family import FAMILIES, family

    p = Parser(prog="genlab train", description="Train a model into a new run directory, or continue one.",
               usage="genlab train MODEL [options] | genlab train --resume RUN [--steps N]")
    p.add_argument("model", nargs="?", help=f"one of: {', '.join(FAMILIES)}")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its last checkpoint")
    p.add_argument("--out", metavar="RUN", help="the new run directory (default: runs/MODEL-DATA-TIME)")
    p.add_argument("--config", metavar="FILE.yaml", help="a config file (as a run's config.yaml)")
    p.add_argument("--preset", metavar="NAME", help="start from a named recipe of the model (genlab models MODEL "
                                                    "lists them); other options override it")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any option, e.g. --set model.dim=32 --set train.lr=2e-4 (repeatable)")
    fam = family(model) if model else None
    tdefaults = fam.TRAIN_DEFAULTS if fam else {}
    ddefaults = fam.DATA_DEFAULTS if fam else {}
    taken: set[str] = set()
    main = p.add_argument_group("common options")
    for cls, d in ((DataConfig, ddefaults), (TrainConfig, tdefaults)):
        _add_fields(main, [r for r in describe(cls) if r[0] in MAIN_FLAGS], d, taken)
    _add_fields(p.add_argument_group("data options"), describe(DataConfig), ddefaults, taken)
    _add_fields(p.add_argument_group("training options"), describe(TrainConfig), tdefaults, taken)
    if fam:
        _add_fields(p.add_argument_group(f"{model} options"), describe(fam.Config), {}, taken)
        p.epilog = "; ".join(kind_defaults(fam)) or None
    return p


def kind_defaults(fam) -> list[str]:
    """The defaults a family changes for one kind of data, e.g. 'on image data: batch_size=64, ...'."""
    by_train, by_model = getattr(fam, "TRAIN_DEFAULTS_BY_KIND", {}), getattr(fam, "MODEL_DEFAULTS_BY_KIND", {})
    lines = []
    for kind in dict.fromkeys([*by_train, *by_model]):
        values = {**by_train.get(kind, {}), **by_model.get(kind, {})}
        lines.append(f"on {kind} data: " + ", ".join(f"{_flag(k)} {_shown(v)}" for k, v in values.items()))
    return lines


def cmd_train(argv: list[str]) -> int:
    from genlab.family import FAMILIES
    from genlab.runs import train

    model = argv[0] if argv and not argv[0].startswith("-") else None
    if model is None and "--config" in argv:
        i = argv.index("--config")
        if i + 1 < len(argv):
            model = read_yaml(argv[i + 1]).get("family")
    if model is not None and model not in FAMILIES:
        raise GenlabError(f"unknown model '{model}' (known: {', '.join(FAMILIES)})")
    args = vars(train_parser(model).parse_args(argv))
    resume = args.pop("resume")
    name = args.pop("model")
    if resume and name:
        raise GenlabError("give either MODEL or --resume RUN, not both")
    if not resume and not name and not args.get("config"):
        raise GenlabError("name a model to train (genlab train MODEL), or --resume RUN; see genlab models")
    if resume:
        for k in ("out", "config", "preset"):
            if args.pop(k):
                raise GenlabError(f"--{k} cannot be used with --resume")
        train(resume=resume, sets=args.pop("sets"), **args)
    else:
        train(name, out=args.pop("out"), config=args.pop("config"), preset=args.pop("preset"), sets=args.pop("sets"),
              **args)
    return 0


def cmd_sample(a) -> int:
    from genlab.runs import load, sample
    from genlab.viz import save_sample_file

    out = Path(a.output) if a.output else Path(a.run) / "samples" / f"sample-n{a.n}-seed{a.seed}.png"
    if out.suffix not in (".png", ".npz"):  # before minutes of sampling, not after
        raise GenlabError(f"output must end in .png or .npz, got {out}")
    model = load(a.run, device=_device(a.device))
    _check_output(out)
    kwargs = {k: getattr(a, k) for k in ("sampler", "steps", "eta", "spacing") if getattr(a, k) is not None}
    x = sample(model, a.n, seed=a.seed, progress=True, batch_size=a.batch_size, classes=a.class_,
               guidance=a.guidance, **kwargs)
    save_sample_file(out, x)
    print(out)
    return 0


def cmd_eval(a) -> int:
    from genlab.runs import evaluate

    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()]
    result = evaluate(a.run, metrics, n=a.n, device=_device(a.device), seed=a.seed, k=a.k, features=a.features,
                      samples=a.samples)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def cmd_inpaint(a) -> int:
    from genlab.runs import inpaint
    from genlab.viz import save_image

    stem = Path(a.image).stem if a.image else f"test{a.test_index}"
    out = Path(a.output) if a.output else Path(f"{stem}-inpainted.png")
    for path in (out, Path(a.figure or "x.png")):
        if path.suffix != ".png":
            raise GenlabError(f"output must end in .png, got {path}")
        _check_output(path)
    done = inpaint(a.run, a.image, mask=a.mask, box=a.box, seed=a.seed, device=_device(a.device), n=a.n,
                   figure=a.figure, test_index=a.test_index, steps=a.steps, jump_length=a.jump_length, resamplings=a.resamplings)
    save_image(out, done[0])
    print(out)
    if a.figure:
        print(a.figure)
    return 0


def cmd_report(a) -> int:
    from genlab.report import write_report

    print(write_report(a.run))
    return 0


def cmd_datasets(a) -> int:
    from genlab.data import availability, cache_dir

    rows = availability(a.data_dir)
    w = max(len(r[0]) for r in rows)
    for name, status, desc in rows:
        print(f"{name:<{w}}  {desc}" + (f"\n{'':<{w}}    {status}" if status else ""))
    print(f"\nsearch order: --data-dir, $GENLAB_DATA, then {cache_dir()}")
    return 0


def cmd_models(a) -> int:
    from genlab import presets
    from genlab.family import FAMILIES, family

    names = [a.model] if a.model else list(FAMILIES)
    for name in names:
        fam = family(name)
        print(f"{name}: {FAMILIES[name][1]}")
        if a.model or len(names) == 1:
            print(f"  trains on {fam.DATA_KIND} data; default data set: {fam.DATA_DEFAULTS.get('dataset')}")
            print("  training defaults: " + ", ".join(f"{_flag(k)} {_shown(v)}" for k, v in fam.TRAIN_DEFAULTS.items()))
            for line in kind_defaults(fam):
                print(f"  {line}")
            recipes = presets.available(name)
            if recipes:
                print(f"  presets (genlab train {name} --preset NAME; genlab/presets/{name}/NAME.yaml):")
                for pname, about in recipes.items():
                    print(f"    {pname:<10} {about}")
            if getattr(fam, "SAMPLERS", ()):
                from genlab.sampling import SAMPLERS

                print("  samplers (genlab sample RUN --sampler NAME; the first is the default):")
                width = max(map(len, fam.SAMPLERS))
                for sname in fam.SAMPLERS:
                    print(f"    {sname:<{width}} {SAMPLERS[sname]}")
            print("  options (the flag, or --set model.NAME=VALUE):")
            for fname, type_name, default, help_ in describe(fam.Config):
                print(f"    {_flag(fname):<20} {type_name:<10} {_shown(default):<14} {help_}")
    if not a.model:
        print("\nmore: genlab models MODEL")
    return 0


def _check_output(path: Path) -> None:
    """Refuse an output file that cannot be written where it is asked for, before the work that fills it."""
    if path.is_dir():
        raise GenlabError(f"cannot write {path}: it is a folder")
    for folder in path.absolute().parents:  # the nearest existing folder must be a writable folder
        if folder.exists():
            if not folder.is_dir():
                raise GenlabError(f"cannot write {path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise GenlabError(f"cannot write {path}: {folder} is not writable")
            return


def _device(name: str) -> str:
    from genlab.device import resolve_device

    return str(resolve_device(name))


def build_parser() -> Parser:
    p = Parser(prog="genlab", description="Deep generative models of images: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.add_parser("train", help="train a model (genlab train MODEL --help for its options)", add_help=False)

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run", metavar="RUN")
    s.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    s.add_argument("--sampler", help="for ddpm and ncsn: ancestral, ddim, euler, heun, dpmpp_2m, dpmpp_2m_sde, "
                                     "and langevin (ncsn); genlab models MODEL lists them")
    s.add_argument("--steps", type=int, help="noise levels (steps) of the sampler; per noise level for langevin "
                                            "(default: all T for ancestral, else 50)")
    s.add_argument("--eta", type=float, help="the stochastic share, 0 to 1, of ddim (default 0: deterministic) and "
                                          "dpmpp_2m_sde (default 1: the reverse SDE)")
    s.add_argument("--spacing", help="the noise levels: uniform, leading or trailing time steps of the model's own "
                                     "(ddpm's default for ancestral and ddim), karras (rho = 7; ddpm's default for "
                                     "euler, heun, dpmpp_2m, dpmpp_2m_sde) or geometric (ncsn's default)")
    s.add_argument("--class", dest="class_", metavar="CLASS",
                   help="a class-conditional ddpm: the class to draw, by index or name (default: each in turn)")
    s.add_argument("--guidance", type=float, help="classifier-free guidance weight w >= 0 (default: the run's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=0, help="samples drawn at once (default: 256 on a CPU, 2048 on a GPU)")
    s.add_argument("-o", "--output", metavar="FILE", help="FILE.png (a grid) or FILE.npz (key 'samples')")

    e = sub.add_parser("eval", help="evaluate a trained run on its test set")
    e.add_argument("run", metavar="RUN")
    e.add_argument("--metrics", default="loss,nll",
                   help="comma-separated: loss, nll (test set); fid, kid, pr, is (samples) (default: loss,nll)")
    e.add_argument("--n", type=int, default=0, help="test examples (default: all) or samples (default: 10000)")
    e.add_argument("--features", default="auto", choices=["auto", "inception", "domain"],
                   help="features for fid/kid/pr/is: the FID Inception, or an offline domain classifier "
                        "(reported as domain_*); auto: Inception when its weights are at hand")
    e.add_argument("--samples", metavar="FILE.npz", help="evaluate these samples (key 'samples') instead of drawing new ones")
    e.add_argument("--k", type=int, help="importance samples for likelihood bounds (vae; default: the model's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")

    i = sub.add_parser("inpaint", help="fill the masked pixels of an image with a trained model")
    i.add_argument("run", metavar="RUN")
    i.add_argument("--image", metavar="FILE", help="the image (resized to the model's size)")
    i.add_argument("--test-index", type=int, metavar="K", help="instead of --image: the K-th image of the run's test set")
    i.add_argument("--mask", metavar="FILE", help="mask image: white marks the missing pixels")
    i.add_argument("--box", metavar="x,y,w,h", help="a missing rectangle, in pixels of the model-size image")
    i.add_argument("--n", type=int, default=1, help="completions to draw (default: 1)")
    i.add_argument("--figure", metavar="FILE.png", help="also write the masked input, the completions and the input")
    i.add_argument("--steps", type=int, help="ddpm: noise levels of RePaint (default: min(T, 250))")
    i.add_argument("--jump-length", type=int, help="ddpm: levels RePaint jumps back up (default: 10)")
    i.add_argument("--resamplings", type=int, help="ddpm: times RePaint denoises each stretch (default: 10)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--device", default="auto")
    i.add_argument("-o", "--output", metavar="FILE.png", help="where to write the (first) completed image")

    r = sub.add_parser("report", help="(re)write RUN/report.html")
    r.add_argument("run", metavar="RUN")

    d = sub.add_parser("datasets", help="known data sets, what is on disk and where to put files")
    d.add_argument("--data-dir", help="also look here")

    m = sub.add_parser("models", help="the model families and their options")
    m.add_argument("model", nargs="?")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        a = build_parser().parse_args(argv)
        if a.command is None:
            build_parser().print_help()
            return 0
        for k in ("n", "steps", "k", "batch_size"):
            low = 0 if k == "batch_size" or (k == "n" and a.command == "eval") else 1
            if getattr(a, k, None) is not None and getattr(a, k) < low:
                raise GenlabError(f"--{k.replace('_', '-')} must be {'at least 0' if low == 0 else 'a positive number'}")
        return {"sample": cmd_sample, "eval": cmd_eval, "inpaint": cmd_inpaint, "report": cmd_report, "datasets": cmd_datasets,
                "models": cmd_models}[a.command](a)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"genlab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `genlab models ncsn | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as e:  # the file system refused: a full disk, a folder that is a file, no permission
        where = f"{e.filename}: " if e.filename else ""
        print(f"genlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
