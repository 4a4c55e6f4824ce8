import pytest

import genlab
from genlab.config import DataConfig, TrainConfig, coerce, parse_sets
from genlab.errors import GenlabError


def test_coercion_and_validation():
    assert coerce(TrainConfig, "lr", "2e-4") == 2e-4
    assert coerce(TrainConfig, "steps", "100") == 100
    assert coerce(TrainConfig, "progress", "false") is False
    assert coerce(TrainConfig, "betas", "0.5,0.9") == [0.5, 0.9]
    for name, bad, match in [("steps", "ten", "integer"), ("lr", "-1", ">= 0"), ("optimizer", "sgd", "choose from"),
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
