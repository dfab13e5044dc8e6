"""The miniature zoo's task: which of ten photographs a 32×32 patch was cut from.

Made only from photographs that the installed packages ship, so it exists offline on any machine with
the project's environment — no download, no data set files:

====  ==============  ===========================================================  ==========
 id   name            source (file in the installed package)                         size H×W
====  ==============  ===========================================================  ==========
  0   astronaut       ``skimage.data.astronaut()`` (Eileen Collins, NASA), colour    512×512
  1   cat             ``skimage.data.chelsea()`` (Stéfan van der Walt's cat), colour 300×451
  2   coffee          ``skimage.data.coffee()`` (a cup of coffee, Rachel Michetti)   400×600
  3   rocket          ``skimage.data.rocket()`` (SpaceX Falcon 9 on its pad), colour 427×640
  4   grace_hopper    matplotlib ``sample_data/grace_hopper.jpg`` (US Navy), colour  600×512
  5   cameraman       ``skimage.data.camera()``, gray                                512×512
  6   brick           ``skimage.data.brick()``, gray texture                        512×512
  7   grass           ``skimage.data.grass()``, gray texture                        512×512
  8   gravel          ``skimage.data.gravel()``, gray texture                       512×512
  9   coins           ``skimage.data.coins()`` (Greek coins), gray                   303×384
====  ==============  ===========================================================  ==========

Patches are 32×32, BGR uint8 (OpenCV's channel order, like every image of this project), cut at the
photograph's own resolution; gray photographs are replicated to three equal channels. Half the classes
are gray, so colour alone cannot separate them: a nearest-centroid classifier on a patch's per-channel
mean colour (centroids from 500 train patches per class) gets 43.9% on the test split
(`tests/test_minidata.py` recomputes it), against 10% chance.

**Regions (train and test never share a pixel).** Each photograph is cut into a grid of 64×64 tiles
(`TILE`, from the top-left corner; the partial tiles at the right and bottom edges are not used). Tile
(row r, column c) belongs to the *test* split when (c − r) mod 3 = 0 — diagonal stripes, a third of the
tiles, spread over the whole photograph so that both splits see every part of the scene — and to the
*train* split otherwise. A patch lies entirely inside the *usable area* of one tile of its split: the tile
shrunk by `MARGIN` = 4 pixels on every side (56×56, so 25×25 patch positions per tile). Usable areas of
different tiles are therefore at least 8 pixels apart, and no train patch can overlap or touch a test
patch (`usable_areas`, `split_regions` and `TrainStream.batch_with_regions` expose the bookkeeping).

**Splits.**
- ``test``: a fixed list of `TEST_PER_CLASS` = 100 patches per class (1000 in all), independent of any
  seed. Patch k of a class sits in that class's test tile k mod T (tiles in row-major order), at an offset
  inside the tile drawn from ``numpy.random.default_rng([TEST_SEED, class])``. The list is
  class-interleaved: image i has class i mod 10 and is patch i // 10 of its class, so the first 10·n images
  hold n patches of every class and ``load_split('test', n_per_class=n)`` is exactly that prefix.
- ``train``: ``load_split('train', n_per_class, seed)`` draws plain (un-augmented) patches from the train
  tiles, same layout, deterministic for the seed; `TrainStream` draws augmented ones for training.

**Augmentation** (`TrainStream`, training only): a uniformly random class, a uniformly random train tile
of it and a uniformly random 32×32 crop inside the tile's usable area; a horizontal flip with probability
½; and a mild contrast/brightness jitter x ← clip((x − m)·c + m + b, 0, 255), rounded, with m the patch's
mean over all pixels and channels, c ~ U(0.8, 1.25) and b ~ U(−16, 16) pixel values. The jitter keeps the
network from leaning on a photograph's exact brightness, the cue the colour baseline uses.
"""
import functools
from dataclasses import dataclass

import cv2
import numpy as np

PATCH = 32
TILE = 64
MARGIN = 4
TEST_PER_CLASS = 100
TRAIN_PER_CLASS = 500          # default size of load_split('train')
TEST_SEED = 20190616           # fixed: the test split never depends on a caller's seed
CONTRAST_RANGE = (0.8, 1.25)
BRIGHTNESS_RANGE = (-16.0, 16.0)

CLASSES = [
    ("astronaut", "skimage.data.astronaut(): astronaut Eileen Collins (NASA), colour photograph"),
    ("cat", "skimage.data.chelsea(): Chelsea the cat, colour photograph"),
    ("coffee", "skimage.data.coffee(): a cup of coffee, colour photograph"),
    ("rocket", "skimage.data.rocket(): a SpaceX Falcon 9 rocket on its launch pad, colour photograph"),
    ("grace_hopper", "matplotlib sample_data/grace_hopper.jpg: portrait of Grace Hopper (US Navy), colour"),
    ("cameraman", "skimage.data.camera(): the 'cameraman' photograph, gray"),
    ("brick", "skimage.data.brick(): a brick wall, gray texture"),
    ("grass", "skimage.data.grass(): grass, gray texture"),
    ("gravel", "skimage.data.gravel(): gravel, gray texture"),
    ("coins", "skimage.data.coins(): Greek coins from Pompeii, gray photograph"),
]
"""(name, source) per class; the label is the index in this list."""

NUM_CLASSES = len(CLASSES)
SPLITS = ("train", "test")


def _skimage_photo(name):
    import skimage.data
    return getattr(skimage.data, name)()


def _matplotlib_photo(file_name):
    import matplotlib.cbook
    path = matplotlib.cbook.get_sample_data(file_name, asfileobj=False)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError("matplotlib sample image {} is missing: reinstall matplotlib".format(path))
    return image[..., ::-1]       # to RGB, like the skimage loaders; turned to BGR below


_LOADERS = {
    "astronaut": lambda: _skimage_photo("astronaut"),
    "cat": lambda: _skimage_photo("chelsea"),
    "coffee": lambda: _skimage_photo("coffee"),
    "rocket": lambda: _skimage_photo("rocket"),
    "grace_hopper": lambda: _matplotlib_photo("grace_hopper.jpg"),
    "cameraman": lambda: _skimage_photo("camera"),
    "brick": lambda: _skimage_photo("brick"),
    "grass": lambda: _skimage_photo("grass"),
    "gravel": lambda: _skimage_photo("gravel"),
    "coins": lambda: _skimage_photo("coins"),
}


@functools.lru_cache(maxsize=None)
def photo(class_index):
    """Class ``class_index``'s photograph as BGR uint8 H×W×3 (gray ones replicated to 3 channels)."""
    image = np.asarray(_LOADERS[CLASSES[class_index][0]]())
    if image.dtype != np.uint8:
        raise ValueError("photograph {} is {}, expected uint8".format(CLASSES[class_index][0], image.dtype))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    else:
        image = image[..., 2::-1]     # RGB(A) → BGR
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return image


def tile_split(row, column):
    """The split tile (row, column) belongs to: test on the diagonal stripes (column − row) mod 3 = 0."""
    return "test" if (column - row) % 3 == 0 else "train"


def _check_split(split):
    if split not in SPLITS:
        raise ValueError("unknown split {!r}: choose 'train' or 'test'".format(split))


@functools.lru_cache(maxsize=None)
def usable_areas(class_index, split):
    """Usable areas (y0, x0, y1, x1), half-open pixel rectangles, of the class's tiles of ``split``, in
    row-major tile order. Every patch of that split lies entirely inside one of them."""
    _check_split(split)
    height, width = photo(class_index).shape[:2]
    areas = []
    for row in range(height // TILE):
        for column in range(width // TILE):
            if tile_split(row, column) == split:
                y0, x0 = row * TILE + MARGIN, column * TILE + MARGIN
                areas.append((y0, x0, y0 + TILE - 2 * MARGIN, x0 + TILE - 2 * MARGIN))
    return tuple(areas)


_POSITIONS = TILE - 2 * MARGIN - PATCH + 1     # patch offsets per axis inside a usable area


@dataclass
class Regions:
    """Where patches come from: label, top-left corner (y, x) in the class's photograph; size PATCH."""
    labels: np.ndarray      # int64 (N,)
    y: np.ndarray           # int64 (N,)
    x: np.ndarray           # int64 (N,)

    def rectangles(self):
        """(N, 4) half-open rectangles y0, x0, y1, x1."""
        return np.stack([self.y, self.x, self.y + PATCH, self.x + PATCH], axis=1)


def _interleave(per_class):
    """Class-interleaved order: item i is class i mod K, number i // K of that class."""
    count = len(per_class[0])
    return [per_class[c][k] for k in range(count) for c in range(len(per_class))]


def _draw_in_tiles(rng, areas, count, round_robin):
    """``count`` patch corners inside ``areas``: tile k mod T (round robin) or a uniform tile each."""
    corners = []
    for k in range(count):
        area = areas[k % len(areas)] if round_robin else areas[rng.integers(len(areas))]
        dy, dx = rng.integers(0, _POSITIONS, size=2)
        corners.append((area[0] + int(dy), area[1] + int(dx)))
    return corners


def split_regions(split, n_per_class=None, seed=0):
    """The regions `load_split` cuts (same arguments); see the module docstring for the rules."""
    _check_split(split)
    if split == "test":
        limit = TEST_PER_CLASS if n_per_class is None else n_per_class
        if not 0 <= limit <= TEST_PER_CLASS:
            raise ValueError("the test split has {} patches per class, asked for {}: pass n_per_class "
                             "between 0 and {}".format(TEST_PER_CLASS, n_per_class, TEST_PER_CLASS))
        per_class = [_draw_in_tiles(np.random.default_rng([TEST_SEED, c]), usable_areas(c, "test"),
                                    TEST_PER_CLASS, round_robin=True)[:limit] for c in range(NUM_CLASSES)]
    else:
        count = TRAIN_PER_CLASS if n_per_class is None else n_per_class
        if count < 0:
            raise ValueError("n_per_class must be ≥ 0, got {}".format(n_per_class))
        per_class = [_draw_in_tiles(np.random.default_rng([seed, c]), usable_areas(c, "train"),
                                    count, round_robin=False) for c in range(NUM_CLASSES)]
    corners = _interleave(per_class) if per_class[0] else []
    labels = np.tile(np.arange(NUM_CLASSES, dtype=np.int64), len(per_class[0]))
    ys = np.array([corner[0] for corner in corners], np.int64)
    xs = np.array([corner[1] for corner in corners], np.int64)
    return Regions(labels=labels, y=ys, x=xs)


def cut_patches(regions):
    """The BGR uint8 (N, 32, 32, 3) patches at ``regions``."""
    patches = np.zeros((len(regions.labels), PATCH, PATCH, 3), np.uint8)
    for index, (label, y, x) in enumerate(zip(regions.labels, regions.y, regions.x)):
        patches[index] = photo(int(label))[y:y + PATCH, x:x + PATCH]
    return patches


def load_split(split, n_per_class=None, seed=0):
    """(images uint8 N×32×32×3 BGR, labels int64 N), class-interleaved.

    ``test``: the fixed list (first ``n_per_class`` of each class, at most 100; ``seed`` is not used).
    ``train``: ``n_per_class`` (default 500) un-augmented patches per class drawn with ``seed``.
    """
    regions = split_regions(split, n_per_class, seed)
    return cut_patches(regions), regions.labels


def jitter(patch, contrast, brightness):
    """clip((x − m)·contrast + m + brightness, 0, 255) rounded to uint8; m = the patch's mean value."""
    values = patch.astype(np.float32)
    mean = values.mean()
    return np.clip(np.rint((values - mean) * contrast + mean + brightness), 0, 255).astype(np.uint8)


@dataclass
class Augmentation:
    """Per-image draws of a `TrainStream` batch, for bookkeeping and tests."""
    regions: Regions
    flipped: np.ndarray      # bool (N,)
    contrast: np.ndarray     # float (N,)
    brightness: np.ndarray   # float (N,)


class TrainStream:
    """Endless augmented training patches, deterministic for a seed (see the module docstring)."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng([seed, 0x7A1])     # its own stream, apart from load_split's

    def batch_with_regions(self, size):
        """(images, labels, `Augmentation`) for ``size`` augmented patches."""
        rng = self.rng
        labels = rng.integers(0, NUM_CLASSES, size=size).astype(np.int64)
        corners = [_draw_in_tiles(rng, usable_areas(int(label), "train"), 1, round_robin=False)[0]
                   for label in labels]
        regions = Regions(labels=labels, y=np.array([c[0] for c in corners], np.int64).reshape(-1),
                          x=np.array([c[1] for c in corners], np.int64).reshape(-1))
        flipped = rng.random(size) < 0.5
        contrast = rng.uniform(*CONTRAST_RANGE, size=size)
        brightness = rng.uniform(*BRIGHTNESS_RANGE, size=size)
        images = cut_patches(regions)
        for index in range(size):
            patch = images[index, :, ::-1] if flipped[index] else images[index]
            images[index] = jitter(patch, contrast[index], brightness[index])
        return images, labels, Augmentation(regions, flipped, contrast, brightness)

    def batch(self, size):
        """(images uint8 size×32×32×3 BGR, labels int64 size) of augmented training patches."""
        images, labels, _ = self.batch_with_regions(size)
        return images, labels
