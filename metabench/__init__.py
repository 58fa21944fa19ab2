"""metabench: a reproducible benchmarking suite for few-shot meta-learning."""

__version__ = "0.1.0"


class MetabenchError(Exception):
    """An error caused by the user's input or environment.

    Its message is one line that says what went wrong and what to do; the CLI prints it
    without a traceback.
    """
