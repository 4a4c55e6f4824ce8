"""The command line: help everywhere, and bad input as one line with exit code 2."""

import subprocess
import sys

import pytest

from genlab.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "genlab", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [[], ["train", "--help"], ["train", "ddpm", "--help"], ["sample", "--help"],
                                  ["eval", "--help"], ["report", "--help"], ["datasets", "--help"], ["models", "--help"]])
def test_help(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    assert code == 0
    assert "usage" in capsys.readouterr().out


def test_models_and_datasets_list(capsys):
    assert main(["models"]) == 0
    assert "ddpm" in capsys.readouterr().out
    assert main(["models", "ddpm"]) == 0
    assert "--time-steps" in capsys.readouterr().out  # the flag's spelling, as `genlab train` takes it
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "text:STRING" in out


@pytest.mark.parametrize("args,message", [
    (["train", "nomodel"], "unknown model 'nomodel'"),
    (["train", "ddpm", "--dataset", "nodata"], "unknown data set 'nodata'"),
    (["train", "ddpm", "--dataset", "mnist", "--data-dir", "/nonexistent"], "mnist not found"),
    (["train", "ddpm", "--dataset", "folder:/nonexistent"], "no such directory"),
    (["train", "ddpm", "--steps", "-3"], "must be >= 0"),
    (["train", "ddpm", "--lr", "fast"], "expected a number"),
    (["train", "ddpm", "--set", "model.schedule=quadratic"], "choose from"),
    (["train", "ddpm", "--set", "nonsense=1"], "unknown option 'nonsense'"),
    (["train", "ddpm", "--bogus-flag"], "unrecognized arguments"),
    (["train", "ddpm", "--config", "/nonexistent.yaml"], "config file not found"),
    (["train", "--resume", "/nonexistent"], "not a genlab run directory"),
    (["train", "ddpm", "--device", "tpu"], "unknown device"),
    (["sample", "/nonexistent"], "not a genlab run directory"),
    (["eval", "/nonexistent"], "not a genlab run directory"),
    (["sample"], "the following arguments are required"),
    (["models", "nomodel"], "unknown model"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written half-way


def test_existing_out_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["train", "ddpm", "--out", str(tmp_path / "run")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_input_through_the_console_entry_point(tmp_path):
    r = run_cli("train", "ddpm", "--dataset", "nodata", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown data set" in r.stderr
    assert not (tmp_path / "x").exists()


def test_readme_families_table_has_one_row_per_family():
    from pathlib import Path

    from genlab.family import FAMILIES

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("## Families", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")]
    assert sorted(rows) == sorted(FAMILIES) and len(rows) == len(set(rows))
