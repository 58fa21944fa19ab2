"""A trained run as an MLflow model (``pyfunc``): ``mlflow.pyfunc.load_model(uri).predict(...)``
classifies query images given a labelled support set, as ``metabench predict`` does.

Input, a dict of numpy arrays (a tensor signature):

* ``support_x``: (n_support, channels, size, size) float32, images as the dataset store gives
  them (grey or RGB in [0, 1], resized to the run's image size: ``metabench.folders`` reads
  folders into exactly this);
* ``support_y``: (n_support,) int64, class indices 0 … ways − 1;
* ``query_x``: (n_query, channels, size, size) float32.

Output: (n_query, ways) float32 class probabilities (softmax of the method's scores).

Example::

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probabilities = model.predict({"support_x": sx, "support_y": sy, "query_x": qx})
    labels = probabilities.argmax(1)
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature, set_model
from mlflow.types import Schema, TensorSpec

from metabench.trained import load_model

ARTIFACT = "model"


# MLflow asks for type hints on ``predict`` to infer a signature from them; this model's
# signature is explicit (named tensors, ``signature``), which no supported hint expresses. MLflow
# shows that request whatever the filters say (it resets them around the check), so it is
# recorded here, where the class is defined, and dropped; any other warning is passed on.
with warnings.catch_warnings(record=True) as _caught:

    class FewShotModel(mlflow.pyfunc.PythonModel):
        """Loads ``checkpoint.pt`` on the CPU and predicts as ``metabench.predict`` does (same checks)."""

        def load_context(self, context) -> None:
            self.model = load_model(Path(context.artifacts["checkpoint"]), "cpu")

        def predict(self, context, model_input, params=None):
            return self.model.predict(model_input["support_x"], model_input["support_y"], model_input["query_x"])


for _warning in _caught:
    if "Add type hints to the `predict` method" not in str(_warning.message):
        warnings.warn_explicit(_warning.message, _warning.category, _warning.filename, _warning.lineno)


def signature(image_shape: list[int]):
    """The tensor signature for a run whose images are (height, width, channels)."""
    height, width, channels = image_shape
    images = (-1, channels, height, width)
    inputs = Schema(
        [
            TensorSpec(np.dtype(np.float32), images, "support_x"),
            TensorSpec(np.dtype(np.int64), (-1,), "support_y"),
            TensorSpec(np.dtype(np.float32), images, "query_x"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]))


def requirements() -> list[str]:
    """What loading the model needs: metabench itself and the torch it was trained with."""
    return [f"metabench=={version('metabench')}", f"torch=={torch.__version__.split('+')[0]}", "numpy"]


# MLflow's "models from code": ``log_model`` stores this file and loading runs it, so no pickled
# object ties a logged model to the exact metabench that wrote it
set_model(FewShotModel())
