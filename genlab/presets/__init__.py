"""Named recipes: `genlab train MODEL --preset NAME` starts from `presets/MODEL/NAME.yaml`.

A preset is a file shaped like a run's config.yaml (sections data, train and model) that holds only what
it changes from the family's defaults. Its opening comment says what it is for and what it costs; the
first comment line is its summary in `genlab models MODEL`. A --config file, flags and --set override it.
"""

from __future__ import annotations

from pathlib import Path

from genlab.config import read_yaml
from genlab.errors import GenlabError

ROOT = Path(__file__).resolve().parent


def available(family: str) -> dict[str, str]:
    """{preset name: its summary line} of one family."""
    return {path.stem: summary(path) for path in sorted((ROOT / family).glob("*.yaml"))}


def summary(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def values(family: str, name: str) -> dict:
    """The preset's sections, checked to be for this family."""
    path = ROOT / family / f"{name}.yaml"
    if not path.is_file() or name not in available(family):  # a name, not a path into another family's folder
        known = ", ".join(available(family)) or "none"
        raise GenlabError(f"model '{family}' has no preset '{name}' (its presets: {known}; genlab models {family})")
    data = read_yaml(path)
    if data.get("family", family) != family:
        raise GenlabError(f"preset {family}/{path.name} is for model '{data['family']}'")
    return data
