"""The README's command lines, as written: every flag and option they use exists and every
`genlab train` line builds a valid configuration (training itself is left to the slow runs)."""

import re
import shlex
from pathlib import Path

import pytest

from genlab.cli import build_parser, train_parser
from genlab.runs import make_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def commands() -> list[str]:
    """`genlab ...` lines of the code blocks and of the results table, placeholders left out."""
    found = []
    for block in re.findall(r"```\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("torchrun"):
                line = line[line.index("genlab"):]
            if line.startswith("genlab ") and not re.search(r"\b(MODEL|RUN|FILE|N)\b|\[", line):
                found.append(line)
    found += re.findall(r"\| `(genlab train [^`]*)`", README)
    return found


def test_the_readme_has_commands_to_check():
    assert sum(c.startswith("genlab train") for c in commands()) >= 15


@pytest.mark.parametrize("line", commands())
def test_readme_command_is_valid(line, tmp_path):
    argv = shlex.split(line)[1:]
    if argv[0] == "train":
        model = argv[1]
        args = vars(train_parser(model).parse_args(argv[1:]))
        args.pop("model"), args.pop("resume"), args.pop("out")
        make_config(model, args.pop("config"), args.pop("sets"), **args)
    else:
        argv = [a if not a.startswith("runs/") else str(tmp_path) for a in argv]
        assert build_parser().parse_args(argv).command == argv[0]
