"""Images in, batches out: reading, ImageNet preprocessing, folder layouts, selection, batching.

Images are BGR uint8 arrays of shape H×W×3 in [0, 255], OpenCV's order, as the released code of
Xie et al. fed its models (SPEC §2: "Our model expects BGR images instead of RGB", main.py). The
graph maps them to model space, x·2/255 − 1 in NCHW; `to_model_space` is the NumPy reference of that
mapping. Two preprocessings exist, both from the original code (SPEC §2):

- ImageNet validation (`resize_shorter_center_crop`): the fb.resnet.torch evaluation augmentor that
  tensorpack's `fbresnet_augmentor(isTrain=False)` implements — shortest edge to 256 (bicubic), then the
  central 224×224.
- Images of unknown source (`resize_naive`): a plain bicubic resize to 224×224, as `--eval-directory` did.

An image that cannot be read raises `UnreadableImageError`; `iterate_batches` reports and skips it so that
one bad file never stops a long run and never disappears without a trace.
"""
import collections
import errno
import logging
import os
import re
import stat
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MODEL_INPUT_SIZE = 224  # the released checkpoints take 224×224 inputs (ImageNetModel.image_shape)
VALIDATION_SHORTER_EDGE = 256  # fb.resnet.torch evaluation: resize to 256, crop 224

# Matched case-insensitively against a file's suffix when walking a directory.
# GIF is listed although OpenCV cannot decode it: a GIF in the data is then reported and listed as skipped, not
# left out without a word.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})

# ILSVRC-2012 class folders are named by WordNet id: "n" followed by 8 digits (e.g. n01440764).
WNID_PATTERN = re.compile(r"n\d{8}")


class UnreadableImageError(ValueError):
    """A file that should be an image but cannot be decoded; `path` and `reason` say which and why."""

    def __init__(self, path, reason, advice="replace the file or remove it from the input"):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}; {advice}")


# --------------------------------------------------------------------------------------------- reading

def read_image_bgr(path):
    """The image at `path` as a BGR uint8 array of shape H×W×3.

    Decoded by `cv2.imread(path, cv2.IMREAD_COLOR)` like the original pipeline (`get_val_dataflow`):
    grayscale and CMYK files become 3-channel BGR, 16-bit files are scaled to 8 bits, and the EXIF
    orientation is applied. Raises `UnreadableImageError` for a missing file, a broken or looping
    symbolic link, a directory, anything that is not a regular file (a named pipe would block), an empty
    file, a file OpenCV cannot decode, and a truncated JPEG — libjpeg decodes the latter with only a
    "Premature end of JPEG file" warning and fills the missing rows with gray, so it is checked here.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode          # follows symbolic links
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnreadableImageError(path, "a loop of symbolic links", advice="fix or remove the link") from None
        if error.errno == errno.ENOENT:
            reason = "a broken symbolic link" if path.is_symlink() else "no such file"
            raise UnreadableImageError(path, reason, advice="check the path") from None
        raise UnreadableImageError(path, error.strerror or str(error), advice="check the path") from None
    if stat.S_ISDIR(mode):
        raise UnreadableImageError(path, "is a directory, not an image file",
                                   advice="pass the directory to list_image_files instead")
    if not stat.S_ISREG(mode):
        # Reading a named pipe or a device would block or never end: only regular files are read.
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UnreadableImageError(path, "not a regular file ({})".format(kind))
    try:
        encoded = path.read_bytes()
    except OSError as error:
        raise UnreadableImageError(path, error.strerror or str(error), advice="check the file's permissions")
    if not encoded:
        raise UnreadableImageError(path, "the file is empty")
    if _is_truncated_jpeg(encoded):
        raise UnreadableImageError(path, "truncated JPEG (no end-of-image marker after the image data)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None and encoded[:4] == b"GIF8":
        raise UnreadableImageError(path, "a GIF, which OpenCV cannot decode", advice="convert it to PNG or JPEG")
    if image is None:
        raise UnreadableImageError(path, "OpenCV cannot decode it (not an image, or a damaged or unsupported one)")
    return image


def _is_truncated_jpeg(encoded):
    """Whether `encoded` is a JPEG whose data stops before its end-of-image marker (FF D9).

    Walks the header segments (each FF xx followed by a 2-byte big-endian length) to the first
    start-of-scan marker (FF DA) of the main image — skipping over any EXIF thumbnail, which is a
    complete JPEG of its own inside an APP1 segment. Entropy-coded data never contains FF D9 (an FF
    byte in it is followed by 00 or a restart marker D0–D7, ITU-T T.81 §B.1.1.5), so after the
    scan begins the end-of-image marker must appear. Non-JPEG data returns False: the decoder judges it.
    """
    if not encoded.startswith(b"\xff\xd8"):
        return False
    position = 2
    while position + 4 <= len(encoded):
        if encoded[position] != 0xFF:
            return False  # not a marker where one should be: malformed, left to the decoder
        marker = encoded[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker == 0xDA:
            return encoded.find(b"\xff\xd9", position) < 0
        elif marker == 0xD9:
            return False  # ends before any image data; the decoder rejects it
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            position += 2
        else:
            position += 2 + int.from_bytes(encoded[position + 2:position + 4], "big")
    return True  # the header segments run past the end of the file


# ----------------------------------------------------------------------------------------- resizing

def resize_shorter_center_crop(image, shorter=VALIDATION_SHORTER_EDGE, crop=MODEL_INPUT_SIZE):
    """ImageNet validation preprocessing: shortest edge to `shorter` (bicubic), then the central crop×crop.

    The rules are tensorpack's `ResizeShortestEdge(256, cv2.INTER_CUBIC)` + `CenterCrop((224, 224))`,
    which the original evaluation used (`fbresnet_augmentor(False)`):
      scale = shorter / min(H, W); the short side becomes `shorter`, the long side
      int(scale · side + 0.5) (rounding half up, unlike Python's `round`); for H == W both are `shorter`.
      The crop starts at top = (H' − crop) // 2, left = (W' − crop) // 2 of the resized H'×W' image.
    `cv2.resize` on uint8 saturates to [0, 255], so the result stays uint8 (crop×crop×3).
    """
    _check_bgr_uint8(image)
    if crop > shorter:
        raise ValueError(f"center crop {crop} is larger than the resized shorter edge {shorter}; use crop <= shorter")
    height, width = image.shape[:2]
    scale = shorter * 1.0 / min(height, width)
    if height < width:
        new_height, new_width = shorter, int(scale * width + 0.5)
    else:
        new_height, new_width = int(scale * height + 0.5), shorter
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
    top = (new_height - crop) // 2
    left = (new_width - crop) // 2
    return np.ascontiguousarray(resized[top:top + crop, left:left + crop])


def resize_naive(image, size=MODEL_INPUT_SIZE):
    """Bicubic resize of the whole image to size×size, ignoring its aspect ratio (uint8 in, uint8 out).

    What the original `--eval-directory` did to images of unknown source (main.py:
    `cv2.resize(img, (224, 224), interpolation=cv2.INTER_CUBIC)`). An image already size×size is
    returned unchanged (as a copy), which is also what `cv2.resize` does for an unchanged size.
    """
    _check_bgr_uint8(image)
    if image.shape[:2] == (size, size):
        return image.copy()
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)


def load_imagenet_val_image(path, crop=MODEL_INPUT_SIZE):
    """An ImageNet validation image ready for the model: read, shortest edge 256, center crop 224.
    For another input size the same 256:224 ratio is kept (shortest edge round(crop · 256/224))."""
    shorter = VALIDATION_SHORTER_EDGE if crop == MODEL_INPUT_SIZE else int(round(crop * VALIDATION_SHORTER_EDGE / MODEL_INPUT_SIZE))
    return resize_shorter_center_crop(read_image_bgr(path), shorter=shorter, crop=crop)


def load_image_naive(path, size=MODEL_INPUT_SIZE):
    """An image of unknown source ready for the model: read, naive bicubic resize to size×size."""
    return resize_naive(read_image_bgr(path), size)


def _check_bgr_uint8(image):
    """Reject anything that is not an H×W×3 uint8 array, naming what was passed."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        described = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                     else type(image).__name__)
        raise ValueError(f"expected a BGR uint8 image of shape H×W×3, got a {described}; read it with read_image_bgr")


# -------------------------------------------------------------------------------------- file lists

def list_image_files(paths):
    """Image files named by `paths` (one path or a list of them: files or directories), as Paths.

    Order: the inputs in the given order; a directory contributes every file below it (walked
    recursively, following symbolic links once) whose suffix is in `IMAGE_EXTENSIONS` (any case),
    sorted by path components, so the order does not depend on the filesystem's listing order.
    A file named explicitly is kept whatever its suffix (or kind: a broken link, a named pipe): the caller
    asked for it, and the reader reports it if it is not a readable image. A file reached twice is listed once, at its first place.
    A path that does not exist raises ValueError; a directory without images logs a warning.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found, seen = [], set()
    for path in map(Path, paths):
        if path.is_dir():
            candidates = _walk_image_files(path)
            if not candidates:
                logger.warning("no image files (%s) under %s", " ".join(sorted(IMAGE_EXTENSIONS)), path)
        elif path.exists() or path.is_symlink():     # a broken or looping link: the reader says which
            candidates = [path]
        else:
            raise ValueError(f"{path} does not exist; pass image files or directories of images")
        for candidate in candidates:
            key = os.path.abspath(candidate)
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def _walk_image_files(directory, others=None):
    """Files with an image suffix anywhere below `directory`, sorted; each real directory visited once. Other
    files that are not hidden are appended to the list `others` when one is given."""
    found, visited = [], set()
    for root, subdirectories, filenames in os.walk(directory, followlinks=True):
        real_root = os.path.realpath(root)
        if real_root in visited:  # a symbolic link back up the tree would otherwise loop forever
            subdirectories[:] = []
            continue
        visited.add(real_root)
        found.extend(Path(root, name) for name in filenames if Path(name).suffix.lower() in IMAGE_EXTENSIONS)
        if others is not None:
            others.extend(Path(root, name) for name in filenames
                          if Path(name).suffix.lower() not in IMAGE_EXTENSIONS and not name.startswith("."))
    return sorted(found)


# ------------------------------------------------------------------------------ ImageNet validation

def check_outside_data(path, data_dir, option="--out"):
    """Refuse an output folder inside the validation folder that is read (`find_imagenet_val`): its figures (PNG)
    would be read as images of the data on the next run. Raises ValueError naming both."""
    try:
        data = find_imagenet_val(data_dir).resolve()
    except ValueError:
        data = Path(data_dir).resolve()
    path = Path(path).resolve()
    if path == data or data in path.parents:
        raise ValueError(f"{option} {path} is inside the data folder {data}: its files would be taken for images "
                         f"of the data; choose an {option} outside it")


def find_imagenet_val(data_dir):
    """The ILSVRC-2012 validation folder of class subfolders: `data_dir/val` or `data_dir` itself.

    Standard layout (SPEC §2): `val/<wnid>/*.JPEG`. `data_dir/val` is preferred when both hold
    wnid-named (n + 8 digits) subfolders. Raises ValueError when neither does, with a hint when the
    images lie flat (`ILSVRC2012_val_00000001.JPEG`, as distributed) and still need sorting into classes.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"ImageNet data folder {data_dir} does not exist or is not a directory")
    for candidate in (data_dir / "val", data_dir):
        if candidate.is_dir() and any(WNID_PATTERN.fullmatch(child.name) and child.is_dir()
                                      for child in candidate.iterdir()):
            return candidate
    message = (f"no ImageNet validation folder under {data_dir}: "
               f"expected {data_dir / 'val'}/<wnid>/*.JPEG or {data_dir}/<wnid>/*.JPEG")
    flat = [folder for folder in (data_dir / "val", data_dir)
            if folder.is_dir() and next(folder.glob("ILSVRC2012_val_*"), None) is not None]
    if flat:
        message += f" (the images in {flat[0]} lie flat: sort them into one subfolder per wnid)"
    raise ValueError(message)


def imagenet_samples(data_dir, class_index=None):
    """[(path, label), ...] for every image in the ILSVRC-2012 validation folder under `data_dir`.

    label = the position of the folder's wnid among the 1000 sorted ILSVRC-2012 wnids (SPEC §2), read
    from `repro.classes.wnid_to_index()` unless `class_index` ({wnid: label}) is given — never the
    position among the subfolders present, so a folder holding a few classes keeps the true labels.
    Sorted by label, then by path. Hidden entries (name starting with ".") are ignored; any other
    subfolder that is not a known wnid is an error naming it; images lying directly in the folder are
    ignored with a warning; no image at all is an error.
    """
    if class_index is None:
        from repro import classes  # imported here so that reading images needs no class table
        class_index = classes.wnid_to_index()
    val_dir = find_imagenet_val(data_dir)
    entries = sorted(child for child in val_dir.iterdir() if not child.name.startswith("."))
    class_dirs = [entry for entry in entries if entry.is_dir()]
    unknown = [folder.name for folder in class_dirs if folder.name not in class_index]
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ValueError(f"{val_dir} has subfolders that are not ILSVRC-2012 class wnids: {shown}; "
                         "move them out of the validation folder")
    stray = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
    if stray:
        logger.warning("ignoring %d image files directly in %s (not in a class folder), e.g. %s",
                       len(stray), val_dir, stray[0].name)
    others = []
    samples = [(path, class_index[folder.name]) for folder in class_dirs for path in _walk_image_files(folder, others)]
    if others:
        logger.warning("ignoring %d file(s) without an image suffix (%s) in the class folders of %s, e.g. %s",
                       len(others), " ".join(sorted(IMAGE_EXTENSIONS)), val_dir, sorted(others)[0])
    if not samples:
        raise ValueError(f"no image files in the class folders of {val_dir}")
    return samples


# ------------------------------------------------------------------------------------------- selection

def select_images(samples, n, seed=0):
    """A fixed selection of `n` (path, label) samples spread over as many classes as possible.

    The rule (deterministic for a seed, independent of the order of `samples`):
      1. group the samples by label; sort each class's samples by path (as a string);
      2. rng = numpy.random.default_rng(seed); the classes, in sorted label order, are shuffled by
         rng.permutation; then, in that shuffled class order, each class's sorted samples are
         shuffled by rng.permutation;
      3. take round-robin: the first sample of every class in the shuffled class order, then the
         second of every class that has one, and so on, until n are taken.
    So n ≤ number of classes gives n images from n different classes, and a smaller n selects a
    prefix of a larger n's selection (same seed). The result is in that pick order. Unlabeled images
    can share one label (e.g. -1): the rule then reduces to a seeded shuffle of the sorted paths.
    n = None or n > len(samples) selects all samples (the latter with a warning).
    """
    samples = list(samples)
    if n is None:
        n = len(samples)
    elif n <= 0:
        raise ValueError(f"cannot select {n} images; ask for at least 1")
    elif n > len(samples):
        logger.warning("asked for %d images but only %d are available: using all of them", n, len(samples))
        n = len(samples)
    by_class = collections.defaultdict(list)
    for sample in samples:
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise ValueError(f"select_images takes (path, label) pairs, got {sample!r}; "
                             "give unlabeled paths one shared label such as -1")
        by_class[sample[1]].append(sample)
    labels = sorted(by_class)
    rng = np.random.default_rng(seed)
    class_order = [labels[i] for i in rng.permutation(len(labels))]
    queues = []
    for label in class_order:
        members = sorted(by_class[label], key=lambda sample: str(sample[0]))
        queues.append([members[i] for i in rng.permutation(len(members))])
    selected = []
    for depth in range(max(map(len, queues), default=0)):
        for queue in queues:
            if len(selected) == n:
                return selected
            if depth < len(queue):
                selected.append(queue[depth])
    return selected


# -------------------------------------------------------------------------------------------- batches

def iterate_batches(items, batch_size, load_fn):
    """Yield (indices, images, skipped) for the pipeline, `batch_size` loaded images at a time.

    items: a sequence of paths or of tuples whose first element is the path (e.g. (path, label));
    load_fn(path) returns one uint8 H×W×3 image (e.g. `load_imagenet_val_image`, `load_image_naive`).
    indices: positions in `items` of the images, in order; images: uint8 array B×H×W×3;
    skipped: [(index, path, error), ...] for the items since the previous batch whose load_fn raised
    `UnreadableImageError` — each is also logged as a warning. The caller records them.
    A skipped image's place is filled from the following items, so every batch but the last is full;
    the last one may even hold no image (shape 0×224×224×3 unless an image was loaded before) when only
    unreadable items remained, so that their report is not lost. Other exceptions propagate.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    indices, images, skipped = [], [], []
    image_shape = (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3)
    for index, item in enumerate(items):
        path = item[0] if isinstance(item, (tuple, list)) else item
        try:
            image = load_fn(path)
        except UnreadableImageError as error:
            logger.warning("skipping unreadable image %s: %s", path, error.reason)
            skipped.append((index, path, error))
            continue
        if indices and image.shape != images[0].shape:
            raise ValueError(f"{path} loads as shape {image.shape} but the batch has {images[0].shape}; "
                             "load_fn must return one fixed size")
        image_shape = image.shape
        indices.append(index)
        images.append(image)
        if len(images) == batch_size:
            yield indices, np.stack(images), skipped
            indices, images, skipped = [], [], []
    if images or skipped:
        batch = np.stack(images) if images else np.zeros((0,) + tuple(image_shape), np.uint8)
        yield indices, batch, skipped


# -------------------------------------------------------------------------------------- model space

def to_model_space(images):
    """NumPy reference of the graph's input mapping (SPEC §2): x · 2/255 − 1, NHWC → NCHW, float32.

    images: N×H×W×3 BGR values in [0, 255] (uint8 as read). 0 maps to −1 and 255 to +1 exactly
    (computed as (x·2)/255 − 1 in float32, every step exact at the ends). For tests and for saving
    adversarial images; the model applies the same mapping inside its graph.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected images of shape N×H×W×3, got {images.shape}; stack single images first")
    scaled = images.astype(np.float32) * np.float32(2.0) / np.float32(255.0) - np.float32(1.0)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def to_uint8_images(model_space_images):
    """Inverse of `to_model_space` for saving: N×3×H×W in [−1, 1] → N×H×W×3 uint8 BGR.

    pixel = round((x + 1) · 255/2), clipped to [0, 255]. An adversarial image is generally not on the
    uint8 grid (PGD steps from uniform noise), so saving rounds it by up to half a pixel level.
    """
    model_space_images = np.asarray(model_space_images, dtype=np.float32)
    if model_space_images.ndim != 4 or model_space_images.shape[1] != 3:
        raise ValueError(f"expected model-space images of shape N×3×H×W, got {model_space_images.shape}")
    pixels = np.rint((model_space_images + np.float32(1.0)) * np.float32(127.5))
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
