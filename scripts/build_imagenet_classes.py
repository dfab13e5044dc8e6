"""Rebuild `imagenet_classes.tsv` from the data files shipped in a `timm` wheel.

The ILSVRC-2012 class index is data, not code: the 1000 wnids in sorted order (the label of a
validation image is the position of its wnid, SPEC §2) and their WordNet lemmas. `timm` ships both
as plain text: `timm/data/_info/imagenet_synsets.txt` (one wnid a line) and
`timm/data/_info/imagenet_synset_to_lemma.txt` (`wnid<TAB>lemma, lemma, ...` for 21,844 synsets).

Usage (the wheel is only read, never installed):

    pip download --no-deps -d /tmp/x timm==1.0.31
    python scripts/build_imagenet_classes.py /tmp/x/timm-1.0.31-py3-none-any.whl
"""
import argparse
import hashlib
import pathlib
import zipfile

SYNSETS_MEMBER = "timm/data/_info/imagenet_synsets.txt"
LEMMAS_MEMBER = "timm/data/_info/imagenet_synset_to_lemma.txt"
OUTPUT = pathlib.Path(__file__).resolve().parent.parent / "third_party" / "imagenet_classes.tsv"
FIRST_WNID, LAST_WNID = "n01440764", "n15075141"


def read_member(wheel, member):
    """Text of one file inside the wheel (a zip archive)."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode("ascii")


def class_rows(synsets_text, lemmas_text):
    """(index, wnid, short name, all lemmas) per class; the short name is the first lemma."""
    wnids = synsets_text.split()
    # The label convention is "index of the wnid in sorted order", so the list must already be it.
    if wnids != sorted(set(wnids)) or len(wnids) != 1000:
        raise ValueError("synset list is not 1000 unique sorted wnids; wrong file in the wheel?")
    if (wnids[0], wnids[-1]) != (FIRST_WNID, LAST_WNID):
        raise ValueError(f"synset list runs {wnids[0]}..{wnids[-1]}, expected {FIRST_WNID}..{LAST_WNID}")
    lemmas = dict(line.split("\t", 1) for line in lemmas_text.splitlines() if line.strip())
    missing = [wnid for wnid in wnids if wnid not in lemmas]
    if missing:
        raise ValueError(f"{len(missing)} wnids have no lemma, e.g. {missing[0]}")
    return [(index, wnid, lemmas[wnid].split(", ")[0], lemmas[wnid]) for index, wnid in enumerate(wnids)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", help="path of a downloaded timm-*.whl")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    rows = class_rows(read_member(args.wheel, SYNSETS_MEMBER), read_member(args.wheel, LEMMAS_MEMBER))
    lines = ["index\twnid\tname\tlemmas"] + ["\t".join(map(str, row)) for row in rows]
    pathlib.Path(args.output).write_text("\n".join(lines) + "\n", encoding="ascii")
    wheel_sha256 = hashlib.sha256(pathlib.Path(args.wheel).read_bytes()).hexdigest()
    print(f"wrote {len(rows)} classes to {args.output} from {args.wheel} (sha256 {wheel_sha256})")


if __name__ == "__main__":
    main()
