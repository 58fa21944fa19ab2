"""Training-episode augmentation: what each option does, and that it is reproducible through the trainer."""

import pytest
import torch
import torch.nn.functional as F

from metabench import MetabenchError
from metabench.config import RunConfig
from metabench.episodes import augment_images
from metabench.runner import evaluate_run, train_run


def numbered(count=20, size=8):
    """Images whose every pixel value is unique, so a crop or flip is identifiable."""
    return torch.arange(count * 3 * size * size, dtype=torch.float32).reshape(count, 3, size, size)


def test_flip_mirrors_about_half_the_images_and_nothing_else():
    images = numbered()
    out = augment_images(images, "flip", torch.Generator().manual_seed(0))
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 3 <= sum(mirrored) <= 17


def test_crop_is_a_window_of_the_zero_padded_image():
    images = numbered()
    out = augment_images(images, "crop", torch.Generator().manual_seed(1))
    padded = F.pad(images, (1, 1, 1, 1))  # 8 // 8 = 1 pixel
    shifts = set()
    for o, p in zip(out, padded):
        windows = [(y, x) for y in range(3) for x in range(3) if torch.equal(o, p[:, y : y + 8, x : x + 8])]
        assert len(windows) == 1
        shifts.add(windows[0])
    assert len(shifts) > 3  # offsets vary between images


def test_same_generator_same_result_and_none_is_identity():
    images = numbered()
    first = augment_images(images, "crop+flip", torch.Generator().manual_seed(5))
    assert torch.equal(first, augment_images(images, "crop+flip", torch.Generator().manual_seed(5)))
    assert torch.equal(augment_images(images, "none", torch.Generator()), images)


def test_unknown_augmentation_is_a_clear_error():
    with pytest.raises(MetabenchError, match="augment must be one of"):
        RunConfig(augment="rotate")


def test_augmented_training_is_reproducible_and_differs_from_plain(tiny_dataset, tmp_path):
    _, data = tiny_dataset
    base = dict(
        dataset="tiny",
        algorithm="protonet",
        iterations=6,
        val_every=3,
        val_episodes=5,
        test_episodes=10,
        queries=5,
        data_dir=str(data),
        hyper={"hidden": 8},
    )
    results = []
    for name, augment in (("a", "crop+flip"), ("b", "crop+flip"), ("c", "none")):
        config = RunConfig(runs_dir=str(tmp_path / name), augment=augment, **base)
        train_run(config)
        results.append(evaluate_run(config))
    strip = lambda m: {k: v for k, v in m.items() if k != "run_id"}  # noqa: E731
    assert strip(results[0]) == strip(results[1])
    logs = [(tmp_path / n / "tiny-protonet-5w1s-seed0" / "train_log.csv").read_text() for n in "ac"]
    assert logs[0] != logs[1]
