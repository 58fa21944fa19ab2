"""Shared fixtures: tiny synthetic datasets, the real glyphs set (built once), shared data."""

from __future__ import annotations

import functools
import http.server
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from metabench.data import store

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# tests track into a throw-away store, never the project's mlflow.db
_TRACKING_DIR = tempfile.mkdtemp(prefix="metabench-tests-mlflow-")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TRACKING_DIR}/mlflow.db"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# Hyper-parameters an algorithm needs on the tests' 16x16 images: Relation Networks' reference
# encoder leaves its first two convolutions unpadded, and the maps would be too small to pool twice.
SMALL_IMAGES = {"relationnet": {"unpadded_convs": 0}}


def tiny_split(
    classes: int, instances: int, size: int = 28, seed: int = 0, prefix: str = "c", channels: int = 1
) -> store.Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(classes * instances, size, size, channels), dtype=np.uint8)
    offsets = np.arange(classes + 1, dtype=np.int64) * instances
    names = [f"{prefix}{i}" for i in range(classes)]
    return store.Split(images, offsets, names, [f"g{i % 3}" for i in range(classes)])


@pytest.fixture
def tiny_dataset(tmp_path) -> tuple[store.Dataset, Path]:
    """A stored random dataset: 12/6/6 classes of 20 images, 28×28 grey."""
    splits = {"train": tiny_split(12, 20, seed=1), "val": tiny_split(6, 20, seed=2), "test": tiny_split(6, 20, seed=3)}
    dataset = store.Dataset("tiny", splits, {"source": "test"})
    root = tmp_path / "data"
    store.save(dataset, root)
    return dataset, root


@pytest.fixture(scope="session")
def glyphs_dir(tmp_path_factory) -> Path:
    """The default glyphs dataset, generated once per test session."""
    from metabench.data import glyphs

    root = tmp_path_factory.mktemp("glyphs-data")
    glyphs.generate(glyphs.GlyphsConfig(), root)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"shared reference data not found at {SHARED_DATA} (CI has it)")
    return SHARED_DATA


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="write the golden canary values of the current behaviour versions (tests/golden/) instead of comparing",
    )


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Start an HTTP server on 127.0.0.1 serving a given directory; yields a starter."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
