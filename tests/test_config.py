import pytest

import genlab
from genlab.config import DataConfig, TrainConfig, coerce, parse_sets
from genlab.errors import GenlabError


def test_coercion_and_validation():
    assert coerce(TrainConfig, "lr", "2e-4") == 2e-4
    assert coerce(TrainConfig, "steps", "100") == 100
    assert coerce(TrainConfig, "progress", "false") is False
    assert coerce(TrainConfig, "betas", "0.5,0.9") == [0.5, 0.9]
    for name, bad, match in [("steps", "ten", "integer"), ("lr", "-1", "> 0"), ("lr", "0", "> 0"),
                             ("warmup_steps", "-1", ">= 0"), ("optimizer", "sgd", "choose from"),
                             ("progress", "maybe", "true or false"), ("bogus", "1", "unknown option")]:
        with pytest.raises(GenlabError, match=match):
            coerce(TrainConfig, name, bad)


def test_parse_sets_routes_bare_and_qualified_keys():
    out = parse_sets(["lr=0.1", "data.flip=true", "image-size=16"], {"data": DataConfig, "train": TrainConfig})
    assert out == {"data": {"flip": "true", "image_size": "16"}, "train": {"lr": "0.1"}}
    with pytest.raises(GenlabError, match="key=value"):
        parse_sets(["lr"], {"train": TrainConfig})


def test_make_config_precedence(tmp_path):
    cfg = genlab.make_config("ddpm")
    assert (cfg.train.batch_size, cfg.train.lr, cfg.model.time_steps, cfg.model.dim) == (32, 1e-3, 50, 16)  # seed 001
    assert cfg.model.dim_mults == [1, 2, 4, 8] and cfg.data.dataset == "digits"
    f = tmp_path / "c.yaml"
    f.write_text("family: ddpm\ntrain: {lr: 0.5, steps: 7}\nmodel: {dim: 8}\n")
    cfg = genlab.make_config(config=f, lr=0.25, sets=["model.dim=4"])
    assert (cfg.train.lr, cfg.train.steps, cfg.model.dim) == (0.25, 7, 4)
    assert genlab.make_config("ddpm", epochs=2).train.steps == 0  # epochs replace the default steps


def test_every_preset_is_a_valid_config_with_a_summary():
    from genlab import presets
    from genlab.family import FAMILIES

    seen = 0
    for fam in FAMILIES:
        for name, about in presets.available(fam).items():
            cfg = genlab.make_config(fam, preset=name)
            assert cfg.family == fam and cfg.data.dataset in ("mnist", "text:CS446") and about, (fam, name)
            seen += 1
    assert set(presets.available("ddpm")) == {"mnist", "mnist-gpu"} and seen >= 10


def test_a_preset_is_overridden_by_a_file_flags_and_sets_and_its_length_by_either_kind(tmp_path):
    cfg = genlab.make_config("vae", preset="mnist")
    assert (cfg.model.arch, cfg.model.latent_dim, cfg.data.binarize, cfg.train.epochs) == ("mlp", 32, True, 100)
    f = tmp_path / "c.yaml"
    f.write_text("model: {latent_dim: 8}\n")
    cfg = genlab.make_config("vae", preset="mnist", config=f, dataset="digits", sets=["model.beta_warmup=7"])
    assert (cfg.model.latent_dim, cfg.data.dataset, cfg.model.beta_warmup, cfg.model.arch) == (8, "digits", 7, "mlp")
    assert genlab.make_config("vae", preset="mnist", steps=3).train.steps == 3  # preset epochs, flag steps
    by_epochs = genlab.make_config("ddpm", preset="mnist", epochs=2).train  # preset steps, flag epochs
    assert (by_epochs.steps, by_epochs.epochs) == (0, 2)
    with pytest.raises(GenlabError, match="no preset 'cifar'.*mnist"):
        genlab.make_config("ddpm", preset="cifar")


def test_train_with_a_preset_from_the_command_line(tmp_path, capsys):
    from genlab.cli import main

    run = tmp_path / "vae"
    assert main(["train", "vae", "--preset", "mnist", "--dataset", "digits", "--steps", "2",
                 "--iw-samples", "4", "--final-eval-n", "8", "--progress", "false", "--out", str(run)]) == 0
    saved = genlab.load(run).config
    assert (saved.model.arch, saved.model.latent_dim, saved.train.steps) == ("mlp", 32, 2)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--preset", "mnist"]) == 2
    assert main(["train", "made", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "no preset 'nope'" in err
    assert main(["models", "gan"]) == 0 and "mnist-dcgan" in capsys.readouterr().out


def test_make_config_rejects_mismatched_data():
    with pytest.raises(GenlabError, match="points data"):
        genlab.make_config("ddpm", dataset="moons")


def test_training_defaults_follow_the_kind_of_data():
    assert genlab.make_config("ncsn").train.batch_size == 1024  # 2-D points: text:CS446
    images = genlab.make_config("ncsn", dataset="digits")
    assert images.train.batch_size == 64 and images.train.steps == 4000
    assert genlab.make_config("ncsn").model.num_sigmas == 20 and images.model.num_sigmas == 10
    assert genlab.make_config("ncsn", dataset="digits", batch_size=8).train.batch_size == 8
    assert genlab.make_config("ncsn", dataset="digits", num_sigmas=4).model.num_sigmas == 4
