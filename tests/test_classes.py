"""The ImageNet class index against facts known independently of the TSV it is read from."""
import re

import numpy as np
import pytest

from repro import classes

# Well-known ILSVRC-2012 labels (the position of the wnid in sorted order), as every ImageNet
# classifier's output numbering has them.
ANCHORS = [
    (0, "n01440764", "tench"),
    (1, "n01443537", "goldfish"),
    (130, "n02007558", "flamingo"),
    (207, "n02099601", "golden retriever"),
    (281, "n02123045", "tabby"),
    (340, "n02391049", "zebra"),
    (388, "n02510455", "giant panda"),
    (954, "n07753592", "banana"),
    (999, "n15075141", "toilet tissue"),
]


def test_index_is_1000_unique_wnids_in_sorted_order():
    wnids = [wnid for wnid, _ in classes.load_class_index()]
    assert len(wnids) == 1000
    assert len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in wnids)


@pytest.mark.parametrize("label, wnid, name", ANCHORS)
def test_known_labels(label, wnid, name):
    assert classes.load_class_index()[label] == (wnid, name)
    assert classes.wnid_to_index()[wnid] == label
    assert classes.class_name(label) == name


def test_wnid_to_index_inverts_the_list():
    index = classes.load_class_index()
    mapping = classes.wnid_to_index()
    assert len(mapping) == 1000
    assert all(index[label][0] == wnid for wnid, label in mapping.items())


def test_names_are_the_first_lemma_of_the_raw_table():
    """Read the TSV by hand (no csv module) and compare with what the loader returns."""
    lines = classes.CLASS_INDEX_PATH.read_text(encoding="ascii").splitlines()
    assert lines[0].split("\t") == ["index", "wnid", "name", "lemmas"]
    raw = [line.split("\t") for line in lines[1:]]
    assert [int(position) for position, *_ in raw] == list(range(1000))
    assert all(name == lemmas.split(", ")[0] for _, _, name, lemmas in raw)
    assert classes.load_class_index() == [(wnid, name) for _, wnid, name, _ in raw]


def test_the_two_shared_names_are_distinct_classes():
    """WordNet gives "crane" (bird, machine) and "maillot" to two classes each; only the wnid tells them apart."""
    by_name = {}
    for label, (_, name) in enumerate(classes.load_class_index()):
        by_name.setdefault(name, []).append(label)
    assert {name: labels for name, labels in by_name.items() if len(labels) > 1} == {
        "crane": [134, 517], "maillot": [638, 639]}


def test_callers_cannot_alter_the_cached_index():
    first = classes.load_class_index()
    first[0] = ("n00000000", "vandalised")
    classes.wnid_to_index()["n01440764"] = 5
    assert classes.load_class_index()[0] == ("n01440764", "tench")
    assert classes.wnid_to_index()["n01440764"] == 0


def test_class_name_accepts_numpy_integers():
    assert classes.class_name(np.int64(207)) == "golden retriever"


@pytest.mark.parametrize("bad", [-1, 1000])
def test_class_name_rejects_out_of_range_labels(bad):
    with pytest.raises(ValueError, match="outside 0..999"):
        classes.class_name(bad)


@pytest.mark.parametrize("bad", [3.0, "3"])
def test_class_name_rejects_non_integers(bad):
    with pytest.raises(TypeError):
        classes.class_name(bad)
