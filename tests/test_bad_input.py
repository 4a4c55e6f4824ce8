"""Bad input across every command, from one table: each case is refused with exit code 2 and one line on
stderr that names the problem, without a traceback, and leaves nothing half-written behind.

The table's placeholders ({run}, {vae}, {mnist_truncated}, ...) are paths that `world` builds once: short
trained runs, damaged copies of them, damaged data sets and images."""

import gzip
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

import genlab
import genlab.trainer
from genlab.cli import main

TINY = "--dataset digits --image-size 8 --dim 8 --dim-mults 1 --time-steps 10 --batch-size 16 --steps 2"

CASES = [
    # -- train: flags and values ------------------------------------------------------------------------
    ("train ddpm " + TINY + " --lr nan", "invalid value nan for train.lr: expected a finite number"),
    ("train ddpm " + TINY + " --lr inf", "invalid value inf for train.lr: expected a finite number"),
    ("train ddpm " + TINY + " --lr=-1e-3", "for train.lr: must be > 0"),
    ("train ddpm " + TINY + " --lr 0", "invalid value 0.0 for train.lr: must be > 0"),
    ("train ddpm " + TINY + " --lr fast", "expected a number"),
    ("train ddpm " + TINY + " --steps -3", "for train.steps: must be >= 0"),
    ("train ddpm " + TINY + " --steps 1.5", "expected an integer"),
    ("train ddpm " + TINY + " --steps many", "expected an integer"),
    ("train ddpm " + TINY + " --batch-size 0", "for train.batch_size: must be >= 1"),
    ("train ddpm " + TINY + " --batch-size -4", "for train.batch_size: must be >= 1"),
    ("train ddpm " + TINY + " --batch-size 100000", "larger than the training set"),
    ("train ddpm " + TINY + " --epochs -1", "for train.epochs: must be >= 0"),
    ("train ddpm " + TINY + " --ema-decay 1.5", "for train.ema_decay: must be <= 1"),
    ("train ddpm " + TINY + " --ema-decay -0.1", "for train.ema_decay: must be >= 0"),
    ("train ddpm " + TINY + " --ema-decay nan", "for train.ema_decay: expected a finite number"),
    ("train ddpm " + TINY + " --grad-clip -1", "for train.grad_clip: must be >= 0"),
    ("train ddpm " + TINY + " --weight-decay -1", "for train.weight_decay: must be >= 0"),
    ("train ddpm " + TINY + " --warmup-steps -5", "for train.warmup_steps: must be >= 0"),
    ("train ddpm " + TINY + " --lr-schedule sometimes", "choose from"),
    ("train ddpm " + TINY + " --precision fp8", "choose from"),
    ("train ddpm " + TINY + " --log-every 0", "for train.log_every: must be >= 1"),
    ("train ddpm " + TINY + " --seed x", "expected an integer"),
    ("train ddpm " + TINY + " --time-steps 0", "for model.time_steps: must be >= 2"),
    ("train ddpm " + TINY + " --time-steps 1", "for model.time_steps: must be >= 2"),
    ("train ddpm " + TINY + " --schedule quadratic", "choose from"),
    ("train ddpm " + TINY + " --dim 0", "for model.dim: must be >= 1"),
    ("train ddpm " + TINY + " --dim-mults 1,x", "for model.dim_mults: expected an integer"),
    ("train ddpm " + TINY + " --dim-mults 1,-2", "[1, -2] for model.dim_mults: must be >= 1"),
    ("train ddpm " + TINY + " --snr-gamma -1", "for model.snr_gamma: must be >= 0"),
    ("train ddpm " + TINY + " --image-size -8", "for data.image_size: must be >= 0"),
    ("train ddpm " + TINY + " --device tpu", "unknown device"),
    ("train ddpm " + TINY + " --device cuda:x", "device"),
    ("train vae --latent-dim 0 --dataset digits --steps 2", "for model.latent_dim: must be >= 1"),
    ("train vae --beta -1 --dataset digits --steps 2", "for model.beta: must be >= 0"),
    ("train gan --latent-dim 0 --steps 2", "for model.latent_dim: must be >= 1"),
    ("train gan --arch resnet --steps 2", "choose from"),
    ("train gan --arch dcgan --image-size 48 --dataset digits --steps 2", "32x32 or 64x64"),
    ("train ncsn --num-sigmas 0 --dataset moons --steps 2", "for model.num_sigmas: must be >= 2"),
    ("train ncsn --sigma-min 2 --sigma-max 1 --dataset moons --steps 2", "sigma"),
    ("train made --num-masks 0 --dataset digits --binarize true --steps 2", "for model.num_masks: must be >= 1"),
    ("train flow --dataset digits --image-size 8 --coupling-steps 0 --checkerboard-steps 0 --steps 2", "without coupling layers"),
    ("train ldm --factor 3 --dataset digits --image-size 8 --steps 2", "invalid value 3 for model.factor: choose from 1, 2, 4, 8"),
    ("train cyclegan --n-blocks -1 --dataset digits --steps 2", "for model.n_blocks: must be >= 0"),
    ("train inpaint-gan --mask sometimes --dataset digits --steps 2", "choose from"),
    ("train nomodel", "unknown model 'nomodel'"),
    ("train", "name a model"),
    ("train ddpm --bogus-flag 3", "unrecognized arguments"),
    ("train ddpm --out", "expected one argument"),
    ("train ddpm --resume {run} --out {tmp}/x", "--resume"),
    # -- train: --set and configs ----------------------------------------------------------------------
    ("train ddpm " + TINY + " --set nonsense=1", "unknown option 'nonsense'"),
    ("train ddpm " + TINY + " --set model.schedule=quadratic", "choose from"),
    ("train ddpm " + TINY + " --set train.lr=nan", "invalid value nan for train.lr: expected a finite number"),
    ("train ddpm " + TINY + " --set train.steps=x", "expected an integer"),
    ("train ddpm " + TINY + " --set lr", "--set expects key=value, got 'lr'"),
    ("train ddpm " + TINY + " --set =3", "unknown option '' in --set '=3'"),
    ("train ddpm " + TINY + " --set model.latent_dim=4", "unknown option"),
    ("train ddpm --config /nonexistent.yaml", "config file not found"),
    ("train ddpm --config {yaml_malformed}", "not valid YAML"),
    ("train ddpm --config {yaml_list}", "mapping"),
    ("train ddpm --config {yaml_unknown_key}", "unknown option"),
    ("train ddpm --config {yaml_wrong_type}", "expected an integer"),
    ("train ddpm --config {yaml_vae}", "unknown option 'model.latent_dim'"),
    ("train ddpm --config {yaml_empty_file}", "is empty"),
    ("train ddpm --preset nopreset", "no preset 'nopreset'"),
    ("train ddpm --preset ../vae/mnist", "model 'ddpm' has no preset '../vae/mnist'"),
    # -- train: data -----------------------------------------------------------------------------------
    ("train ddpm --dataset nodata", "unknown data set 'nodata'"),
    ("train ddpm --dataset mnist --data-dir /nonexistent", "mnist not found"),
    ("train ddpm --dataset fashion-mnist --data-dir /nonexistent", "fashion-mnist not found"),
    ("train ddpm --dataset mnist --data-dir {mnist_truncated}", "do not have the published checksums"),
    ("train ddpm --dataset mnist --data-dir {mnist_bad_magic}", "do not have the published checksums"),
    ("train ddpm --dataset mnist --data-dir {mnist_not_gzip}", "do not have the published checksums"),
    ("train ddpm --dataset mnist --data-dir {mnist_zero_bytes}", "do not have the published checksums"),
    ("train ddpm --dataset mnist --data-dir {mnist_missing_labels}", "mnist not found"),
    ("train ddpm --dataset folder:/nonexistent", "no such directory"),
    ("train ddpm --dataset folder:{folder_empty}", "no image files"),
    ("train ddpm --dataset folder:{folder_text_only}", "no image files"),
    ("train ddpm --dataset folder:{folder_unreadable}", "could be read"),
    ("train ddpm --dataset folder:{folder_zero_byte_images}", "could be read"),
    ("train ddpm --dataset text:", "trains on image data, but 'text:' is points data"),
    ("train ncsn --dataset text:", "non-empty string"),
    ("train ncsn --dataset 'text:   '", "text: needs a non-empty string"),
    ("train ddpm --dataset moons --steps 2", "trains on image data, but 'moons' is points data"),
    ("train flow --dataset digits --image-size 7 --steps 2", "image"),
    ("train cyclegan --dataset moons --steps 2", "image"),
    ("train ddpm --dataset digits --cond class --steps 2 --dim 8 --image-size 8 --dataset folder:{folder_one}",
     "--cond class needs a labelled data set"),
    # -- output paths ----------------------------------------------------------------------------------
    ("train ddpm " + TINY + " --out {run}", "already exists"),
    ("train ddpm " + TINY + " --out {a_file}/run", "cannot create the run directory"),
    ("train ddpm " + TINY + " --out {a_file}", "already exists"),
    ("sample {run} -o {a_file}/x.png --n 2", "is a file, not a folder"),
    ("sample {run} -o out.jpg --n 2", "must end in .png or .npz"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 -o {a_file}/x.png --steps 2", "is a file, not a folder"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 -o x.txt --steps 2", ".png"),
    # -- run directories and checkpoints ---------------------------------------------------------------
    ("sample /nonexistent", "not a genlab run directory"),
    ("sample {tmp}", "not a genlab run directory"),
    ("sample {a_file}", "not a genlab run directory"),
    ("eval /nonexistent", "not a genlab run directory"),
    ("report /nonexistent", "not a genlab run directory"),
    ("inpaint /nonexistent --test-index 0 --box 0,0,2,2", "not a genlab run directory"),
    ("train --resume /nonexistent", "not a genlab run directory"),
    ("sample {run_all_truncated} --n 2", "no intact checkpoint"),
    ("sample {run_all_zero_byte} --n 2", "no intact checkpoint"),
    ("sample {run_no_checkpoints} --n 2", "no checkpoint"),
    ("eval {run_all_truncated} --metrics loss", "no intact checkpoint"),
    ("train --resume {run_all_truncated}", "no intact checkpoint"),
    ("sample {run_config_malformed} --n 2", "config.yaml"),
    ("sample {run_config_unknown_family} --n 2", "unknown model"),
    ("sample {run_config_edited_shape} --n 2", "does not fit this model"),
    ("sample {run_config_missing} --n 2", "not a genlab run directory"),
    # -- sample arguments ------------------------------------------------------------------------------
    ("sample", "the following arguments are required"),
    ("sample {run} --n 0", "--n must be a positive number"),
    ("sample {run} --n=-5", "--n must be a positive number"),
    ("sample {run} --n ten", "invalid int value"),
    ("sample {run} --sampler nosampler --n 2", "unknown sampler"),
    ("sample {run} --sampler langevin --n 2", "available: ancestral, ddim, euler, heun, dpmpp_2m"),
    ("sample {run} --sampler ddim --steps 500 --n 2", "between 1 and 10"),
    ("sample {run} --sampler ddim --steps 0 --n 2", "--steps must be a positive number"),
    ("sample {run} --sampler ddim --eta 2 --n 2", "--eta"),
    ("sample {run} --sampler ddim --eta nan --n 2", "--eta"),
    ("sample {run} --sampler heun --eta 0.5 --n 2", "--eta"),
    ("sample {run} --spacing cosine --n 2", "--spacing takes one of"),
    ("sample {run} --guidance 2 --n 2", "--guidance"),
    ("sample {run} --class 3 --n 2", "--class"),
    ("sample {run} --batch-size -1 --n 2", "--batch-size"),
    ("sample {run} --device tpu --n 2", "unknown device"),
    ("sample {vae} --sampler ddim --n 2", "one way to sample"),
    ("sample {vae} --steps 10 --n 2", "--steps"),
    # -- eval arguments --------------------------------------------------------------------------------
    ("eval {run} --metrics bogus", "unknown metric"),
    ("eval {run} --metrics ''", "--metrics names no metric"),
    ("eval {run} --n=-1", "--n must be at least 0"),
    ("eval {run} --features fancy", "invalid choice"),
    ("eval {run} --samples /nonexistent.npz --metrics fid", "No such file or directory"),
    ("eval {run} --samples {npz_wrong_key} --metrics fid", "has no array 'samples' (it has: images)"),
    ("eval {run} --samples {npz_wrong_shape} --metrics fid", "samples of shape (4, 3, 5, 5) do not match the data's (N, 1, 8, 8)"),
    ("eval {run} --samples {a_text_file} --metrics fid", "not a NumPy .npz file"),
    ("eval {run} --k 0 --metrics nll", "--k"),
    ("eval {points} --metrics nll", "has no likelihood"),
    # -- inpaint arguments -----------------------------------------------------------------------------
    ("inpaint {run} --box 0,0,2,2", "give exactly one of --image FILE or --test-index K"),
    ("inpaint {run} --image {image} --test-index 0 --box 0,0,2,2", "give exactly one of --image FILE or --test-index K"),
    ("inpaint {run} --image {image}", "give exactly one of --mask FILE or --box x,y,w,h"),
    ("inpaint {run} --image {image} --mask {mask} --box 0,0,2,2", "give exactly one of --mask FILE or --box x,y,w,h"),
    ("inpaint {run} --image /nonexistent.png --box 0,0,2,2", "cannot read image /nonexistent.png"),
    ("inpaint {run} --image {a_text_file} --box 0,0,2,2", "cannot read"),
    ("inpaint {run} --image {image_zero_bytes} --box 0,0,2,2", "cannot read"),
    ("inpaint {run} --image {image} --mask {a_text_file}", "cannot read"),
    ("inpaint {run} --image {image} --mask {mask_wrong_size}", "is 5x13 pixels but the image is 8x8"),
    ("inpaint {run} --image {image} --mask {mask_empty}", "marks no missing pixels"),
    ("inpaint {run} --image {image} --box 1,2,3", "x,y,w,h"),
    ("inpaint {run} --image {image} --box a,b,c,d", "x,y,w,h"),
    ("inpaint {run} --image {image} --box 0,0,0,3", "does not fit inside the model's 8x8 image"),
    ("inpaint {run} --image {image} --box 20,20,4,4", "does not fit inside the model's 8x8 image"),
    ("inpaint {run} --image {image} --box=-1,0,2,2", "does not fit inside the model's 8x8 image"),
    ("inpaint {run} --test-index 100000 --box 0,0,2,2", "--test-index"),
    ("inpaint {run} --test-index -1 --box 0,0,2,2", "--test-index"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 --n 0", "--n must be a positive number"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 --jump-length 0", "--jump-length"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 --resamplings 0", "--resamplings"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 --steps 0", "--steps"),
    ("inpaint {run} --test-index 0 --box 0,0,2,2 --figure fig.jpg", ".png"),
    ("inpaint {vae} --test-index 0 --box 0,0,2,2", "cannot inpaint"),
    ("inpaint {points} --image {image} --box 0,0,2,2", "2-D points"),
    # -- models and datasets ---------------------------------------------------------------------------
    ("models nomodel", "unknown model"),
    ("datasets --data-dir", "expected one argument"),
    ("nocommand", "invalid choice"),
]


def ids():
    return [c[0][:60] for c in CASES]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    w = {"tmp": root}

    def run(name, family, **options):
        genlab.train(family, out=root / name, progress=False, final_eval_n=8, device="cpu", **options)
        return root / name

    w["run"] = run("ddpm", "ddpm", dataset="digits", image_size=8, dim=8, dim_mults=[1], num_res_blocks=1,
                   attn_levels=0, time_steps=10, batch_size=16, steps=2)
    w["vae"] = run("vae", "vae", dataset="digits", image_size=8, arch="mlp", hidden=[16], batch_size=16, steps=2)
    w["points"] = run("points", "ncsn", dataset="moons", num_sigmas=3, langevin_steps=2, batch_size=64, steps=2)

    def damaged(name, change):
        path = root / name
        shutil.copytree(w["run"], path)
        change(path)
        w[name] = path

    def every_checkpoint(fn):
        def change(path):
            for f in (path / "checkpoints").rglob("*.safetensors"):
                fn(f)
        return change

    damaged("run_all_truncated", every_checkpoint(lambda f: f.write_bytes(f.read_bytes()[:100])))
    damaged("run_all_zero_byte", every_checkpoint(lambda f: f.write_bytes(b"")))
    damaged("run_no_checkpoints", lambda p: shutil.rmtree(p / "checkpoints"))
    damaged("run_config_malformed", lambda p: (p / "config.yaml").write_text("family: ddpm\nmodel: [unclosed\n"))
    damaged("run_config_unknown_family", lambda p: (p / "config.yaml").write_text(
        (p / "config.yaml").read_text().replace("family: ddpm", "family: transformer")))
    damaged("run_config_edited_shape", lambda p: (p / "config.yaml").write_text(
        (p / "config.yaml").read_text().replace("dim: 8", "dim: 12")))
    damaged("run_config_missing", lambda p: (p / "config.yaml").unlink())

    w["a_file"] = root / "a_file"
    w["a_file"].write_text("not a directory")
    w["a_text_file"] = root / "notes.txt"
    w["a_text_file"].write_text("hello")

    for name, text in {"yaml_malformed": "model: {dim: [1, 2\n", "yaml_list": "- 1\n- 2\n",
                       "yaml_unknown_key": "family: ddpm\nmodel:\n  wings: 2\n",
                       "yaml_wrong_type": "family: ddpm\ntrain:\n  steps: many\n",
                       "yaml_vae": "family: vae\nmodel:\n  latent_dim: 4\n", "yaml_empty_file": ""}.items():
        w[name] = root / f"{name}.yaml"
        w[name].write_text(text)

    # MNIST folders holding all four file names, each broken in its own way
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    good = {n: gzip.compress(struct.pack(">IIII", 2051, 2, 28, 28) + bytes(2 * 784)) if "images" in n
            else gzip.compress(struct.pack(">II", 2049, 2) + bytes(2)) for n in names}
    broken = {"mnist_truncated": lambda b: b[: len(b) // 2], "mnist_not_gzip": lambda b: b"plain bytes",
              "mnist_zero_bytes": lambda b: b"",
              "mnist_bad_magic": lambda b: gzip.compress(struct.pack(">I", 1234) + gzip.decompress(b)[4:])}
    for name, fn in broken.items():
        (root / name / "mnist").mkdir(parents=True)
        for n in names:
            (root / name / "mnist" / n).write_bytes(fn(good[n]))
        w[name] = root / name
    (root / "mnist_missing_labels" / "mnist").mkdir(parents=True)
    for n in names[:1]:
        (root / "mnist_missing_labels" / "mnist" / n).write_bytes(good[n])
    w["mnist_missing_labels"] = root / "mnist_missing_labels"

    for name in ("folder_empty", "folder_text_only", "folder_unreadable", "folder_zero_byte_images", "folder_one"):
        (root / name).mkdir()
        w[name] = root / name
    (root / "folder_text_only" / "readme.txt").write_text("no images here")
    (root / "folder_unreadable" / "a.png").write_bytes(b"not a png at all")
    (root / "folder_unreadable" / "b.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    (root / "folder_zero_byte_images" / "a.png").write_bytes(b"")
    for i in range(12):  # one class: nothing to condition on
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "folder_one" / f"{i}.png")

    w["image"] = root / "image.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(w["image"])
    w["image_zero_bytes"] = root / "zero.png"
    w["image_zero_bytes"].write_bytes(b"")
    w["mask"] = root / "mask.png"
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    Image.fromarray(m).save(w["mask"])
    w["mask_wrong_size"] = root / "mask_big.png"
    Image.fromarray(np.full((13, 5), 255, np.uint8)).save(w["mask_wrong_size"])
    w["mask_empty"] = root / "mask_empty.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(w["mask_empty"])

    w["npz_wrong_key"] = root / "wrong_key.npz"
    np.savez(w["npz_wrong_key"], images=np.zeros((4, 1, 8, 8), np.float32))
    w["npz_wrong_shape"] = root / "wrong_shape.npz"
    np.savez(w["npz_wrong_shape"], samples=np.zeros((4, 3, 5, 5), np.float32))
    return w


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("line,message", CASES, ids=ids())
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(line, message, world, tmp_path, monkeypatch, capsys):
    import shlex

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENLAB_DATA", raising=False)
    monkeypatch.setattr(genlab.trainer.Trainer, "fit", lambda self: pytest.fail("bad input reached training"))
    before = snapshot(world["tmp"])
    argv = [a.format(**world) for a in shlex.split(line)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, f"exit {code}: {err!r}"
    assert message in lines[0], lines[0]
    assert snapshot(world["tmp"]) == before  # no run directory, checkpoint or output left half-made
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"], list(tmp_path.iterdir())


def test_the_table_is_large_and_has_no_repeats():
    lines = [c[0] for c in CASES]
    assert len(set(lines)) == len(lines)
    assert len(CASES) >= 100
    print(f"{len(CASES)} bad inputs")
