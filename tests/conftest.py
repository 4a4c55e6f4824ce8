import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("GENLAB_OFFLINE", "1")  # tests never touch the network
# one cache for the whole session (domain classifiers, reference features), never the user's
os.environ["GENLAB_CACHE"] = tempfile.mkdtemp(prefix="genlab-test-cache-")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `make test`'s worker processes: one thread each, the cores shared
    os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(os.environ.get("GENLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# A DDPM small enough to train in seconds on a laptop CPU.
TINY_DDPM = dict(dataset="digits", image_size=8, dim=8, dim_mults=[1, 2], num_res_blocks=1, attn_levels=1,
                 time_steps=10, batch_size=16, progress=False, final_eval_n=20)


def shared_data(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny trained DDPM run shared by the tests that only read a run."""
    import genlab

    out = tmp_path_factory.mktemp("runs") / "tiny"
    genlab.train("ddpm", out=out, steps=8, **TINY_DDPM)
    return out
