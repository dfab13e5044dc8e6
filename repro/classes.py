"""The ILSVRC-2012 class index: label ↔ wnid ↔ human-readable name.

A label is the position of the class's wnid in sorted order (SPEC §2), which is how the
`val/<wnid>/*.JPEG` folder layout and the released checkpoints' 1000-way `linear` layer number the
classes. The table lives in `third_party/imagenet_classes.tsv` (provenance: `third_party/README.md`).
"""
import csv
import functools
import operator

from repro import resources

CLASS_INDEX_PATH = resources.data_dir("third_party") / "imagenet_classes.tsv"
NUM_CLASSES = 1000


def load_class_index():
    """[(wnid, name), ...] for the 1000 classes, position = label.

    The name is the first WordNet lemma (e.g. "tench"); two pairs of classes share it
    ("crane" 134/517, "maillot" 638/639), so map names back to labels through the wnid.
    The file is read once; each call returns a fresh list, so callers cannot alter the cache.
    """
    return list(_class_table())


@functools.lru_cache(maxsize=None)
def _class_table():
    """The parsed and checked TSV as a tuple of (wnid, name), read once per process."""
    with open(CLASS_INDEX_PATH, newline="", encoding="ascii") as table:
        rows = list(csv.DictReader(table, delimiter="\t", quoting=csv.QUOTE_NONE))
    classes = [(row["wnid"], row["name"]) for row in rows]
    # The file is data maintained by hand-run tooling; refuse a table that breaks the label convention.
    wnids = [wnid for wnid, _ in classes]
    positions = [int(row["index"]) for row in rows]
    if len(classes) != NUM_CLASSES or wnids != sorted(set(wnids)) or positions != list(range(NUM_CLASSES)):
        raise ValueError(f"{CLASS_INDEX_PATH} is not 1000 unique wnids in sorted order; "
                         "rebuild it with third_party/build_imagenet_classes.py")
    return tuple(classes)


def wnid_to_index():
    """{wnid: label} for the 1000 classes (a fresh dict per call; build it once per loop)."""
    return {wnid: index for index, (wnid, _) in enumerate(_class_table())}


def class_name(index):
    """Human-readable name of label `index`, an integer (Python or NumPy) in 0..999."""
    label = operator.index(index)  # rejects floats and strings with a TypeError
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"class index {index!r} is outside 0..{NUM_CLASSES - 1}; pass an ImageNet label")
    return _class_table()[label][1]
