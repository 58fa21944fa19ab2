"""A trained run logged in MLflow's model format predicts what `metabench predict` predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from metabench import MetabenchError
from metabench.config import RunConfig
from metabench.data import store
from metabench.folders import load_queries, load_support
from metabench.runner import train_run
from metabench.trained import load_trained


@pytest.mark.parametrize("algorithm", ["protonet", "maml"])  # an embedding method and a transductive one
def test_the_logged_model_predicts_the_labels_of_metabench_predict(tmp_path, glyphs_dir, algorithm, monkeypatch):
    import mlflow
    from typer.testing import CliRunner

    from metabench import trained
    from metabench.cli import app

    config = RunConfig(
        algorithm=algorithm,
        data_dir=str(glyphs_dir),
        runs_dir=str(tmp_path / "runs"),
        episodes_dir=str(tmp_path / "episodes"),
        iterations=6,
        val_every=6,
        val_episodes=5,
        queries=3,
        hyper={"hidden": 8, **({"meta_batch": 2} if algorithm == "maml" else {})},
    )
    train_run(config)
    run_id = json.loads((config.run_dir / "mlflow_run.json").read_text())["run_id"]

    test = store.load("glyphs", glyphs_dir).split("test")
    support, query = tmp_path / "support", tmp_path / "query"
    for way, cls in enumerate([0, 7, 21, 40, 90]):
        images = test.images[test.offsets[cls] : test.offsets[cls + 1], :, :, 0]
        (support / f"c{way}").mkdir(parents=True)
        Image.fromarray(images[0]).save(support / f"c{way}" / "shot.png")
        for q in range(1, 3):
            Image.fromarray(images[q]).save((query.mkdir(exist_ok=True), query / f"c{way}_{q}.png")[1])
    loads = []
    monkeypatch.setattr(trained, "load_trained", lambda *args: loads.append(args) or load_trained(*args))
    printed = CliRunner().invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(config.run_dir / "checkpoint.pt"),
            "--support",
            str(support),
            "--query",
            str(query),
        ],
    )
    assert printed.exit_code == 0, printed.output
    assert len(loads) == 1  # the checkpoint is read once, for its image shape and its weights
    expected = dict(line.split(",") for line in printed.stdout.strip().splitlines()[1:])

    support_x, support_y, classes = load_support(support, 1, 28)
    query_x, names = load_queries(query, 1, 28)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.get_input_schema().input_names() == ["support_x", "support_y", "query_x"]
    probabilities = model.predict(
        {"support_x": support_x.numpy(), "support_y": support_y.numpy(), "query_x": query_x.numpy()}
    )
    assert probabilities.shape == (len(names), 5)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert {name: classes[label] for name, label in zip(names, probabilities.argmax(1))} == expected
    # the logged model checks its input as metabench.predict does (beyond what the signature enforces)
    gap = np.where(support_y.numpy() == 2, 4, support_y.numpy())
    with pytest.raises(MetabenchError, match="support_y must use every class index"):
        model.predict({"support_x": support_x.numpy(), "support_y": gap, "query_x": query_x.numpy()})
