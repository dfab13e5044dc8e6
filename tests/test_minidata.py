"""The miniature data set (repro.minidata): sources against the packages' own loaders, determinism,
spatially disjoint splits checked on pixel masks, the class-interleaved test order, the augmentation
against a direct NumPy reimplementation, and the colour-only baseline."""
import socket

import numpy as np
import pytest
import skimage.data

from repro import minidata

GRAY = ["cameraman", "brick", "grass", "gravel", "coins"]


def names():
    return [name for name, _ in minidata.CLASSES]


# --- sources ---------------------------------------------------------------------------------------

def test_ten_documented_classes_half_of_them_gray():
    assert len(minidata.CLASSES) == minidata.NUM_CLASSES == 10
    assert len(set(names())) == 10
    assert all(isinstance(source, str) and source for _, source in minidata.CLASSES)
    for index, name in enumerate(names()):
        image = minidata.photo(index)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        equal_channels = np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        assert equal_channels == (name in GRAY), name


@pytest.mark.parametrize("index, loader", [(0, "astronaut"), (1, "chelsea"), (3, "rocket"), (9, "coins")])
def test_photos_are_the_packages_images_in_bgr_order(index, loader):
    reference = getattr(skimage.data, loader)()
    if reference.ndim == 2:
        reference = np.repeat(reference[..., None], 3, axis=2)
    else:
        reference = reference[..., ::-1]          # RGB → BGR by hand
    np.testing.assert_array_equal(minidata.photo(index), reference)


def test_grace_hopper_is_matplotlibs_sample_in_bgr_order():
    import matplotlib.cbook
    import matplotlib.image
    rgb = matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    bgr = minidata.photo(names().index("grace_hopper"))
    assert bgr.shape == rgb.shape
    # Two JPEG decoders (PIL, OpenCV) may differ by a grey level or two; the channel order may not.
    assert np.abs(bgr[..., ::-1].astype(int) - rgb.astype(int)).mean() < 1.0
    assert np.abs(bgr.astype(int) - rgb.astype(int)).mean() > 10.0


def test_photos_load_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    minidata.photo.cache_clear()
    minidata.usable_areas.cache_clear()
    images, labels = minidata.load_split("test", n_per_class=1)
    assert images.shape == (10, 32, 32, 3) and list(labels) == list(range(10))


# --- splits ----------------------------------------------------------------------------------------

def test_shapes_and_dtypes():
    images, labels = minidata.load_split("test")
    assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1000,) and labels.dtype == np.int64
    images, labels = minidata.load_split("train", n_per_class=7, seed=1)
    assert images.shape == (70, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64


def test_test_split_is_fixed_class_interleaved_balanced_and_prefix_closed():
    images, labels = minidata.load_split("test")
    np.testing.assert_array_equal(labels, np.arange(1000) % 10)
    assert np.bincount(labels).tolist() == [100] * 10
    again, _ = minidata.load_split("test", seed=123)          # the seed does not move the test split
    np.testing.assert_array_equal(images, again)
    first, first_labels = minidata.load_split("test", n_per_class=5)
    np.testing.assert_array_equal(first, images[:50])
    np.testing.assert_array_equal(first_labels, labels[:50])
    # Patches of one class are not all the same crop.
    assert len({images[i].tobytes() for i in range(0, 1000, 10)}) == 100


def test_train_split_is_deterministic_for_a_seed():
    a, la = minidata.load_split("train", n_per_class=20, seed=3)
    b, lb = minidata.load_split("train", n_per_class=20, seed=3)
    c, _ = minidata.load_split("train", n_per_class=20, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(la, np.arange(200) % 10)
    assert not np.array_equal(a, c)


def test_patches_are_the_photo_pixels_at_their_regions():
    for split in ("train", "test"):
        regions = minidata.split_regions(split, n_per_class=10, seed=2)
        images, labels = minidata.load_split(split, n_per_class=10, seed=2)
        np.testing.assert_array_equal(labels, regions.labels)
        for image, label, y, x in zip(images, regions.labels, regions.y, regions.x):
            np.testing.assert_array_equal(image, minidata.photo(label)[y:y + 32, x:x + 32])


def footprint(class_index, rectangles):
    """Boolean pixel mask of the photo covered by the given half-open rectangles."""
    mask = np.zeros(minidata.photo(class_index).shape[:2], bool)
    for y0, x0, y1, x1 in rectangles:
        mask[y0:y1, x0:x1] = True
    return mask


def dilate(mask, radius):
    """Pixels within Chebyshev distance ``radius`` of the mask (a direct shift-and-or)."""
    grown = mask.copy()
    height, width = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = np.zeros_like(mask)
            shifted[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
                mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
            grown |= shifted
    return grown


def test_no_test_patch_touches_any_pixel_a_train_patch_can_come_from():
    """Pixel masks: the union of every train patch that can ever be drawn (the train tiles' usable
    areas) and every test patch are disjoint, and stay apart by the 2·MARGIN-pixel gap."""
    test_regions = minidata.split_regions("test")
    stream_images, stream_labels, augmentation = minidata.TrainStream(seed=11).batch_with_regions(400)
    train_regions = minidata.split_regions("train", n_per_class=50, seed=5)
    gap = 2 * minidata.MARGIN
    for c in range(10):
        test_mask = footprint(c, test_regions.rectangles()[test_regions.labels == c])
        train_area = footprint(c, minidata.usable_areas(c, "train"))
        assert test_mask.sum() > 0 and train_area.sum() > 0
        assert not (test_mask & train_area).any(), minidata.CLASSES[c][0]
        assert not (dilate(test_mask, gap - 1) & train_area).any(), minidata.CLASSES[c][0]
        # Every drawn train patch lies inside the train area (so the check above covers it).
        for regions in (train_regions, augmentation.regions):
            drawn = footprint(c, regions.rectangles()[regions.labels == c])
            assert not (drawn & ~train_area).any()
            assert not (drawn & test_mask).any()
        test_area = footprint(c, minidata.usable_areas(c, "test"))
        assert not (test_mask & ~test_area).any()
    # Both splits cover a fair share of each photo: about 2/3 and 1/3 of the tiles.
    for c in range(10):
        train_tiles, test_tiles = len(minidata.usable_areas(c, "train")), len(minidata.usable_areas(c, "test"))
        assert 0.25 <= test_tiles / (train_tiles + test_tiles) <= 0.4


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        minidata.load_split("validation")
    with pytest.raises(ValueError, match="n_per_class"):
        minidata.load_split("test", n_per_class=101)
    with pytest.raises(ValueError, match="n_per_class"):
        minidata.load_split("train", n_per_class=-1)


# --- augmentation ------------------------------------------------------------------------------------

def test_stream_is_deterministic_per_seed():
    a = minidata.TrainStream(seed=7).batch(32)
    b = minidata.TrainStream(seed=7).batch(32)
    c = minidata.TrainStream(seed=8).batch(32)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (32, 32, 32, 3) and a[0].dtype == np.uint8 and a[1].dtype == np.int64


def test_augmentation_is_the_documented_crop_flip_and_bounded_jitter():
    images, labels, draws = minidata.TrainStream(seed=3).batch_with_regions(200)
    low_c, high_c = minidata.CONTRAST_RANGE
    low_b, high_b = minidata.BRIGHTNESS_RANGE
    assert ((draws.contrast >= low_c) & (draws.contrast <= high_c)).all()
    assert ((draws.brightness >= low_b) & (draws.brightness <= high_b)).all()
    assert 0.35 < draws.flipped.mean() < 0.65
    assert set(np.unique(labels)) == set(range(10))
    for image, label, y, x, flip, contrast, brightness in zip(
            images, labels, draws.regions.y, draws.regions.x, draws.flipped, draws.contrast, draws.brightness):
        crop = minidata.photo(label)[y:y + 32, x:x + 32].astype(np.float64)
        if flip:
            crop = crop[:, ::-1]
        expected = np.clip(np.rint((crop - crop.mean()) * contrast + crop.mean() + brightness), 0, 255)
        # float32 inside the module, float64 here: rounding may differ by one grey level at a .5.
        assert np.abs(image.astype(np.float64) - expected).max() <= 1
        # Bounded: the jitter moves a pixel by at most |c − 1|·|x − m| + |b| (+ rounding).
        bound = np.abs(contrast - 1) * np.abs(crop - crop.mean()) + abs(brightness) + 1
        assert (np.abs(image - crop) <= bound).all()


# --- difficulty --------------------------------------------------------------------------------------

def test_colour_alone_is_far_from_enough():
    """Nearest centroid on a patch's per-channel mean colour (centroids from 500 train patches per
    class): well below what the trained networks reach, far above chance (the task is not noise)."""
    train, train_labels = minidata.load_split("train", n_per_class=500, seed=0)
    test, test_labels = minidata.load_split("test")
    train_features = train.reshape(len(train), -1, 3).mean(axis=1)
    test_features = test.reshape(len(test), -1, 3).mean(axis=1)
    centroids = np.stack([train_features[train_labels == c].mean(axis=0) for c in range(10)])
    distances = ((test_features[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == test_labels).mean()
    assert 0.2 < accuracy < 0.6
    assert accuracy == pytest.approx(0.439, abs=0.0005)     # the number quoted in the module docstring
