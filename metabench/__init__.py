"""metabench: a reproducible benchmarking suite for few-shot meta-learning.

The Python API (``metabench.train``, ``evaluate``, ``predict``, ``load_leaderboard``,
``run_config``, ``fetch``) lives in ``metabench.api`` and is imported on first use, so that
``import metabench`` and ``metabench --version`` stay fast.
"""

__version__ = "0.1.0"

API = ("run_config", "fetch", "train", "evaluate", "predict", "load_leaderboard")
__all__ = ["MetabenchError", "__version__", *API]


class MetabenchError(Exception):
    """An error caused by the user's input or environment.

    Its message is one line that says what went wrong and what to do; the CLI prints it
    without a traceback.
    """


def __getattr__(name: str):
    if name in API:
        from metabench import api

        return getattr(api, name)
    raise AttributeError(f"module 'metabench' has no attribute {name!r}")
