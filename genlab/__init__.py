"""genlab: the classic deep generative models of images behind one API and one CLI.

    import genlab
    model = genlab.train("ddpm", dataset="digits", steps=500)   # a run directory under runs/
    images = model.sample(16)                                    # (16, C, H, W) in [0, 1]
    model = genlab.load("runs/ddpm-digits-...")                  # later, from disk
"""

__version__ = "0.1.0"

from genlab.runs import evaluate, load, make_config, sample, train  # noqa: E402

__all__ = ["train", "load", "sample", "evaluate", "make_config", "__version__"]
