"""``glyphs``: the embedded, Omniglot-like default dataset, rendered from matplotlib's fonts.

Why: the default pipeline must run on a fresh machine with no internet. Every machine with
matplotlib has its TrueType fonts (DejaVu, STIX, Computer Modern), and those fonts cover
thousands of characters from dozens of Unicode blocks, so they give an Omniglot-shaped dataset
for free:

* a class is one Unicode character; its alphabet is its Unicode block;
* its 20 instances differ by font face, stroke width and a seeded random affine distortion
  (rotation, shear, scale, translation), then are reduced to 28×28 grey, ink dark on light as in
  Omniglot;
* characters that look alike across or within blocks (A / Α / А) are removed by comparing
  undistorted renders, so no class is a copy of another;
* blocks are split into background alphabets (meta-train, a few held out for validation) and
  evaluation alphabets (test), as Omniglot's are.

Generation is seeded per class (``numpy.random.default_rng([seed, codepoint])``), so the output
is bit-identical for the same seed and library versions whatever the number of worker
processes. The font checksums and the output checksum are recorded in ``meta.json``; a mismatch
with the reference in ``glyphs_reference.json`` is reported as a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import unicodedata
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from metabench import MetabenchError
from metabench.data import store
from metabench.files import sha256_file

REFERENCE_FILE = Path(__file__).with_name("glyphs_reference.json")

# (Unicode block, first code point, last code point, split). Background blocks train or
# validate; evaluation blocks are only ever seen at test time.
BLOCKS = (
    ("Basic Latin", 0x0020, 0x007F, "train"),
    ("Latin-1 Supplement", 0x00A0, 0x00FF, "train"),
    ("Latin Extended-A", 0x0100, 0x017F, "train"),
    ("Latin Extended-B", 0x0180, 0x024F, "train"),
    ("IPA Extensions", 0x0250, 0x02AF, "train"),
    ("Cyrillic", 0x0400, 0x04FF, "train"),
    ("Armenian", 0x0530, 0x058F, "train"),
    ("Unified Canadian Aboriginal Syllabics", 0x1400, 0x167F, "train"),
    ("Latin Extended Additional", 0x1E00, 0x1EFF, "train"),
    ("Arrows", 0x2190, 0x21FF, "train"),
    ("Mathematical Operators", 0x2200, 0x22FF, "train"),
    ("Box Drawing", 0x2500, 0x257F, "train"),
    ("Dingbats", 0x2700, 0x27BF, "train"),
    ("Braille Patterns", 0x2800, 0x28FF, "train"),
    ("Supplemental Arrows-B", 0x2900, 0x297F, "train"),
    ("Yijing Hexagram Symbols", 0x4DC0, 0x4DFF, "train"),
    ("Hebrew", 0x0590, 0x05FF, "val"),
    ("Phonetic Extensions", 0x1D00, 0x1D7F, "val"),
    ("Geometric Shapes", 0x25A0, 0x25FF, "val"),
    ("Letterlike Symbols", 0x2100, 0x214F, "val"),
    ("Greek and Coptic", 0x0370, 0x03FF, "test"),
    ("Greek Extended", 0x1F00, 0x1FFF, "test"),
    ("Georgian", 0x10A0, 0x10FF, "test"),
    ("Lao", 0x0E80, 0x0EFF, "test"),
    ("Arabic", 0x0600, 0x06FF, "test"),
    ("Cyrillic Supplement", 0x0500, 0x052F, "test"),
    ("Miscellaneous Symbols", 0x2600, 0x26FF, "test"),
    ("Number Forms", 0x2150, 0x218F, "test"),
    ("Supplemental Mathematical Operators", 0x2A00, 0x2AFF, "test"),
    ("Latin Extended-D", 0xA720, 0xA7FF, "test"),
    ("Tai Xuan Jing Symbols", 0x1D300, 0x1D35F, "test"),
    ("Playing Cards", 0x1F0A0, 0x1F0FF, "test"),
    ("Old Italic", 0x10300, 0x1032F, "test"),
    ("Miscellaneous Technical", 0x2300, 0x23FF, "test"),
    ("Domino Tiles", 0x1F030, 0x1F09F, "test"),
    ("Enclosed Alphanumerics", 0x2460, 0x24FF, "test"),
)
EXCLUDED_FONTS = ("LastResortHE", "STIXNonUni", "STIXSiz", "Display")
# Computer Modern fonts use TeX encodings: only their letters and digits sit at Unicode points.
COMPUTER_MODERN_TEXT = ("cmr10", "cmb10", "cmti10", "cmss10", "cmtt10", "cmmi10")
CM_CHARS = frozenset(ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")

RENDER_CANVAS = 112  # working resolution; reduced to image_size at the end
FONT_SIZE = 72


@dataclass(frozen=True)
class GlyphsConfig:
    """How the glyphs dataset is generated; filled from params.yaml ``data.glyphs``."""

    seed: int = 0
    instances: int = 20  # images per class, as in Omniglot
    image_size: int = 28
    max_classes_per_alphabet: int = 55  # Omniglot's largest alphabet has 55 characters
    min_faces: int = 3  # a character must exist in this many font faces
    duplicate_correlation: float = 0.85  # undistorted renders this alike count as one character
    rotation_degrees: float = 10.0
    shear: float = 0.15
    scale_min: float = 0.8
    scale_max: float = 1.1
    translation_pixels: float = 1.0  # at image_size
    max_stroke: int = 3  # extra stroke width in pixels at the render resolution
    workers: int = 0  # 0: one per CPU core


def font_files() -> list[Path]:
    """The TrueType fonts shipped with matplotlib that the dataset draws from."""
    import matplotlib  # only to generate the dataset: loading it needs neither matplotlib nor fontTools

    directory = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(p for p in directory.glob("*.ttf") if not any(x in p.name for x in EXCLUDED_FONTS))
    fonts = [p for p in fonts if not p.stem.startswith("cm") or p.stem in COMPUTER_MODERN_TEXT]
    if not fonts:
        raise MetabenchError(f"no fonts found in {directory}; reinstall matplotlib")
    return fonts


def font_coverage(fonts: list[Path]) -> dict[str, frozenset[int]]:
    from fontTools.ttLib import TTFont  # only to generate the dataset

    coverage = {}
    for path in fonts:
        cmap = set(TTFont(str(path), lazy=True).getBestCmap())
        coverage[path.name] = frozenset(cmap & CM_CHARS if path.stem.startswith("cm") else cmap)
    return coverage


@cache
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, FONT_SIZE)


def render_glyph(font_path: str, char: str, stroke: int = 0) -> np.ndarray | None:
    """Ink of ``char`` (0..255, ink bright) tightly cropped, or None if the font draws nothing."""
    font = _font(font_path)
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    if right - left < 1 or bottom - top < 1:
        return None
    image = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(image).text((1 - left, 1 - top), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    ink = np.asarray(image)
    rows, cols = np.nonzero(ink > 32)
    if len(rows) == 0:
        return None
    return ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def place(ink: np.ndarray, size: int, rng: np.random.Generator | None, config: GlyphsConfig) -> np.ndarray:
    """Scale ``ink`` to fill the frame, distort it (if ``rng``) and reduce to size×size, dark ink."""
    canvas = RENDER_CANVAS
    box = 0.78 * canvas
    fit = box / max(ink.shape)
    angle, shear, scale, shift = 0.0, 0.0, 1.0, np.zeros(2)
    if rng is not None:
        angle = np.deg2rad(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
        shear = rng.uniform(-config.shear, config.shear)
        scale = rng.uniform(config.scale_min, config.scale_max)
        shift = rng.uniform(-config.translation_pixels, config.translation_pixels, size=2) * canvas / size
    # forward map about the centres: out = R(angle) @ Shear @ (scale * fit) @ (in - c_in) + c_out + shift
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) * (scale * fit)
    inverse = np.linalg.inv(forward)
    c_in = np.array([ink.shape[1], ink.shape[0]]) / 2.0
    c_out = np.array([canvas, canvas]) / 2.0 + shift
    offset = c_in - inverse @ c_out
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = Image.fromarray(ink).transform(
        (canvas, canvas), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    small = warped.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _reference_render(job: tuple[int, str, int]) -> np.ndarray | None:
    codepoint, font_path, size = job
    ink = render_glyph(font_path, chr(codepoint))
    if ink is None or max(ink.shape) < FONT_SIZE // 8:  # dots and tiny marks are not characters
        return None
    return place(ink, size, None, GlyphsConfig())


def _render_class(job: tuple[int, tuple[str, ...], GlyphsConfig]) -> np.ndarray:
    """All instances of one character; seeded by (seed, code point) alone."""
    codepoint, faces, config = job
    rng = np.random.default_rng([config.seed, codepoint])
    order = rng.permutation(len(faces))
    images = []
    for index in range(config.instances):
        face = faces[order[index % len(faces)]]
        stroke = int(rng.integers(0, config.max_stroke + 1))
        ink = render_glyph(face, chr(codepoint), stroke)
        images.append(place(ink, config.image_size, rng, config))
    return np.stack(images)


def _map(function, jobs, workers: int, progress=None, what: str = "render"):
    workers = workers or os.cpu_count() or 1
    results = []
    with contextlib.ExitStack() as stack:
        if workers == 1:
            outputs = map(function, jobs)
        else:
            outputs = stack.enter_context(ProcessPoolExecutor(workers)).map(function, jobs, chunksize=32)
        for result in outputs:
            results.append(result)
            if progress:
                progress(what, len(results), len(jobs))
    return results


def select_classes(
    config: GlyphsConfig, fonts: list[Path], progress=None
) -> list[tuple[str, int, tuple[str, ...], str]]:
    """Pick the characters: (block, code point, font faces that draw it, split)."""
    candidates = _candidates(config, fonts)
    jobs = [(codepoint, faces[0], config.image_size) for _, codepoint, faces, _ in candidates]
    references = _map(_reference_render, jobs, config.workers, progress, "check characters")
    kept = _distinct(candidates, references, config.duplicate_correlation)
    chosen = []
    for block, *_ in BLOCKS:
        members = [c for c in kept if c[0] == block]
        if len(members) > config.max_classes_per_alphabet:
            rng = np.random.default_rng([config.seed, sum(map(ord, block))])
            picked = sorted(rng.choice(len(members), config.max_classes_per_alphabet, replace=False))
            members = [members[i] for i in picked]
        chosen.extend(members)
    return chosen


def _candidates(config: GlyphsConfig, fonts: list[Path]) -> list[tuple[str, int, tuple[str, ...], str]]:
    """Every letter, number or symbol of the blocks drawn by at least ``min_faces`` fonts."""
    coverage = font_coverage(fonts)
    by_name = {p.name: str(p) for p in fonts}
    # faces in a fixed priority order: the reference render uses the first that draws the char
    priority = sorted(by_name, key=lambda n: (not n.startswith("DejaVuSans."), not n.startswith("DejaVu"), n))
    candidates = []
    for block, first, last, split in BLOCKS:
        for codepoint in range(first, last + 1):
            if unicodedata.category(chr(codepoint))[0] not in "LNS":
                continue
            faces = tuple(by_name[n] for n in priority if codepoint in coverage[n])
            if len(faces) >= config.min_faces:
                candidates.append((block, codepoint, faces, split))
    return candidates


def _distinct(candidates: list, references: list, threshold: float) -> list:
    """The candidates whose reference render is not blank and correlates below ``threshold``
    with every render kept before it (so no two classes look alike)."""
    kept = []
    kept_vectors = None  # one row per kept render, filled in place (stacking them anew each time is quadratic)
    for candidate, reference in zip(candidates, references):
        if reference is None:
            continue
        vector = (255.0 - reference.astype(np.float64)).ravel()
        vector -= vector.mean()
        norm = np.linalg.norm(vector)
        if norm == 0:
            continue
        vector /= norm
        if kept_vectors is None:
            kept_vectors = np.empty((len(candidates), vector.size))
        if kept and float(np.max(kept_vectors[: len(kept)] @ vector)) >= threshold:
            continue
        kept_vectors[len(kept)] = vector
        kept.append(candidate)
    return kept


def generate(config: GlyphsConfig, data_dir: Path, progress=None) -> store.Dataset:
    """Generate the glyphs dataset into ``data_dir/glyphs`` and return it."""
    fonts = font_files()
    classes = select_classes(config, fonts, progress)
    jobs = [(cp, faces, config) for _, cp, faces, _ in classes]
    images = _map(_render_class, jobs, config.workers, progress, "render classes")
    splits = {}
    for split in store.SPLITS:
        members = [(c, im) for c, im in zip(classes, images) if c[3] == split]
        stacked = np.ascontiguousarray(np.concatenate([im for _, im in members])[..., None])
        offsets = np.arange(len(members) + 1, dtype=np.int64) * config.instances
        names = [f"U+{cp:04X} {unicodedata.name(chr(cp), '?')}" for (_, cp, _, _), _ in members]
        splits[split] = store.Split(stacked, offsets, names, [c[0] for c, _ in members])
    font_checksums = {p.name: sha256_file(p) for p in fonts}
    info = {"source": "matplotlib fonts", "generator": asdict(config), "fonts": font_checksums}
    dataset = store.Dataset("glyphs", splits, info)
    store.save(dataset, data_dir)
    check_reference(dataset, config)
    return dataset


def check_reference(dataset: store.Dataset, config: GlyphsConfig) -> None:
    """Warn when the output differs from the recorded reference, and say whether fonts explain it."""
    if not REFERENCE_FILE.is_file():
        return
    reference = json.loads(REFERENCE_FILE.read_text())
    settings = {k: v for k, v in asdict(config).items() if k != "workers"}
    if reference.get("generator") != settings:
        return  # a non-default configuration has no reference to compare with
    if dataset.checksum == reference["checksum"]:
        return
    changed = sorted(n for n, h in dataset.info["fonts"].items() if reference["fonts"].get(n) != h)
    cause = (
        f"fonts differ: {', '.join(changed)}" if changed else "fonts match, so Pillow/FreeType/numpy rendering differs"
    )
    warnings.warn(
        f"glyphs checksum {dataset.checksum[:12]} differs from the reference {reference['checksum'][:12]} "
        f"({cause}); results are not comparable with reports made from the reference data",
        stacklevel=2,
    )


def write_reference(dataset: store.Dataset, config: GlyphsConfig) -> None:
    """Record the current output as the reference (maintainers only, after checking it)."""
    settings = {k: v for k, v in asdict(config).items() if k != "workers"}
    payload = {"generator": settings, "fonts": dataset.info["fonts"], "checksum": dataset.checksum}
    REFERENCE_FILE.write_text(json.dumps(payload, indent=1) + "\n")
