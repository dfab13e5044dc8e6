"""repro.data against direct OpenCV/NumPy computations, Pillow's decoder and hand-computed sizes."""
import logging
import random

import cv2
import numpy as np
import pytest
from PIL import Image

from repro import data


def write_png(path, image):
    """Write a BGR uint8 image losslessly (PNG) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg_bytes(image, quality=95):
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


# ------------------------------------------------------------------------------------------- reading

def test_read_image_bgr_keeps_opencv_channel_order(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 120, 230  # blue, green, red in OpenCV's order
    path = write_png(tmp_path / "bgr.png", image)

    loaded = data.read_image_bgr(path)

    assert loaded.dtype == np.uint8 and loaded.shape == (4, 5, 3)
    assert (loaded[..., 0] == 10).all() and (loaded[..., 2] == 230).all()
    # Pillow decodes the same file as RGB: red first.
    rgb = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(loaded, rgb[..., ::-1])


def test_read_image_bgr_turns_grayscale_into_three_equal_channels(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)

    loaded = data.read_image_bgr(path)

    assert loaded.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def assert_unreadable(path, reason_fragment):
    with pytest.raises(data.UnreadableImageError) as raised:
        data.read_image_bgr(path)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert str(path) in message and "\n" not in message
    assert reason_fragment in raised.value.reason
    assert raised.value.path == path


def test_text_file_named_jpg_is_unreadable(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    assert_unreadable(path, "cannot decode")


def test_truncated_jpeg_is_unreadable_although_opencv_decodes_it(tmp_path):
    encoded = jpeg_bytes(random_image(64, 80))
    path = tmp_path / "truncated.jpg"
    path.write_bytes(encoded[:len(encoded) // 2])
    # The reason for the explicit check: OpenCV returns a gray-filled image for a truncated JPEG.
    assert cv2.imread(str(path), cv2.IMREAD_COLOR) is not None
    assert_unreadable(path, "truncated JPEG")


def test_truncated_jpeg_is_detected_past_an_embedded_thumbnail(tmp_path):
    # An EXIF thumbnail is a complete JPEG (with its own end marker) inside an APP1 segment.
    thumbnail = jpeg_bytes(random_image(8, 8, seed=1))
    payload = b"Exif\x00\x00" + thumbnail
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    main = jpeg_bytes(random_image(64, 80))
    with_thumbnail = main[:2] + app1 + main[2:]
    complete, truncated = tmp_path / "complete.jpg", tmp_path / "truncated.jpg"
    complete.write_bytes(with_thumbnail)
    truncated.write_bytes(with_thumbnail[:len(with_thumbnail) - len(main) // 2])

    np.testing.assert_array_equal(data.read_image_bgr(complete), cv2.imdecode(np.frombuffer(main, np.uint8), 1))
    assert_unreadable(truncated, "truncated JPEG")


def test_jpeg_with_bytes_after_its_end_marker_is_readable(tmp_path):
    encoded = jpeg_bytes(random_image(16, 16))
    path = tmp_path / "padded.jpg"
    path.write_bytes(encoded + b"\x00" * 100)
    np.testing.assert_array_equal(data.read_image_bgr(path), cv2.imdecode(np.frombuffer(encoded, np.uint8), 1))


def test_truncated_png_missing_empty_and_directory_are_unreadable(tmp_path):
    write_png(tmp_path / "full.png", random_image(40, 40))
    encoded = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(encoded[:len(encoded) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")

    assert_unreadable(tmp_path / "cut.png", "cannot decode")
    assert_unreadable(tmp_path / "missing.png", "no such file")
    assert_unreadable(tmp_path / "empty.jpg", "empty")
    assert_unreadable(tmp_path, "directory")


# ------------------------------------------------------------------------------------------ resizing

@pytest.mark.parametrize("height, width, resized_height, resized_width", [
    (300, 400, 256, 341),  # landscape: 400 · 256/300 = 341.33
    (500, 375, 341, 256),  # portrait: 500 · 256/375 = 341.33
    (512, 513, 256, 257),  # 513 · 0.5 = 256.5 rounds half up (Python's round would give 256)
    (100, 100, 256, 256),  # square, upscaled
    (256, 999, 256, 999),  # already 256 on the short side
])
def test_resize_shorter_center_crop_matches_slicing_the_cv2_resize(height, width, resized_height, resized_width):
    image = random_image(height, width)

    cropped = data.resize_shorter_center_crop(image)

    resized = cv2.resize(image, (resized_width, resized_height), interpolation=cv2.INTER_CUBIC)
    top, left = (resized_height - 224) // 2, (resized_width - 224) // 2
    assert cropped.dtype == np.uint8 and cropped.shape == (224, 224, 3)
    np.testing.assert_array_equal(cropped, resized[top:top + 224, left:left + 224])


def test_resize_shorter_center_crop_takes_the_center_not_a_corner():
    # A white square in the middle of a 400×600 black image stays in the middle of the crop.
    image = np.zeros((400, 600, 3), np.uint8)
    image[150:250, 250:350] = 255
    cropped = data.resize_shorter_center_crop(image)
    # Scale 256/400 = 0.64: the square spans rows 96..160 and columns 160..224 of the 256×384 image,
    # the crop starts at (16, 80), so the square sits at rows 80..144, columns 80..144 of the crop.
    assert cropped[112, 112].min() == 255
    assert cropped[:60].max() == 0 and cropped[170:].max() == 0
    assert cropped[:, :60].max() == 0 and cropped[:, 170:].max() == 0


def test_resize_naive_leaves_a_224_image_unchanged_and_resizes_others_without_cropping():
    image = random_image(224, 224)
    np.testing.assert_array_equal(data.resize_naive(image), image)
    # The original --eval-directory called cv2.resize even at 224×224: that is the identity too.
    np.testing.assert_array_equal(cv2.resize(image, (224, 224), interpolation=cv2.INTER_CUBIC), image)

    tall = random_image(300, 120, seed=3)
    resized = data.resize_naive(tall)
    assert resized.dtype == np.uint8 and resized.shape == (224, 224, 3)
    np.testing.assert_array_equal(resized, cv2.resize(tall, (224, 224), interpolation=cv2.INTER_CUBIC))


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32)])
def test_resizing_rejects_what_is_not_a_bgr_uint8_image(bad):
    with pytest.raises(ValueError, match="H×W×3"):
        data.resize_shorter_center_crop(bad)
    with pytest.raises(ValueError, match="H×W×3"):
        data.resize_naive(bad)


@pytest.mark.slow
def test_resize_shorter_center_crop_equals_the_original_tensorpack_augmentors():
    from repro.engines.tensorflow.tfcompat import tf  # noqa: F401  (sets up TensorFlow before tensorpack imports it)
    from tensorpack.dataflow import imgaug

    augmentors = imgaug.AugmentorList([imgaug.ResizeShortestEdge(256, cv2.INTER_CUBIC),
                                       imgaug.CenterCrop((224, 224))])
    for seed, (height, width) in enumerate([(375, 500), (500, 333), (512, 513), (300, 300), (227, 640)]):
        image = random_image(height, width, seed)
        np.testing.assert_array_equal(data.resize_shorter_center_crop(image), augmentors.augment(image))


# ---------------------------------------------------------------------------------------- file lists

def test_list_image_files_walks_directories_sorted_with_image_extensions_in_any_case(tmp_path):
    root = tmp_path / "images"
    names = ["b/2.JPG", "b/1.png", "a.jpeg", "b/deeper/x.TIFF", "c.webp", "d.Bmp", "e.ppm", "f.pgm", "g.tif"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")  # listing looks at names only
    (root / "notes.txt").write_text("x")
    (root / "anim.gif").write_bytes(b"GIF89a")
    (root / "b" / "folder.jpg").mkdir()  # a directory with an image suffix is not a file

    listed = data.list_image_files(root)

    # A GIF is listed (OpenCV cannot decode it, so the reader then reports it as unreadable: never left out
    # without a word); notes.txt is not.
    expected = ["a.jpeg", "anim.gif", "b/1.png", "b/2.JPG", "b/deeper/x.TIFF", "c.webp", "d.Bmp", "e.ppm", "f.pgm",
                "g.tif"]
    assert listed == [root / name for name in expected]


def test_list_image_files_keeps_input_order_named_files_and_lists_each_file_once(tmp_path):
    write_png(tmp_path / "dir" / "b.png", random_image(2, 2))
    write_png(tmp_path / "dir" / "a.png", random_image(2, 2))
    named = tmp_path / "named.dat"  # named explicitly: kept whatever its suffix
    named.write_bytes(b"x")

    listed = data.list_image_files([named, tmp_path / "dir", tmp_path / "dir" / "a.png", str(named)])

    assert listed == [named, tmp_path / "dir" / "a.png", tmp_path / "dir" / "b.png"]


def test_list_image_files_rejects_a_missing_path_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as raised:
        data.list_image_files([tmp_path, missing])
    assert str(missing) in str(raised.value) and "\n" not in str(raised.value)


def test_list_image_files_warns_about_a_directory_without_images(tmp_path, caplog):
    (tmp_path / "readme.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="repro.data"):
        assert data.list_image_files(tmp_path) == []
    assert str(tmp_path) in caplog.text


# ------------------------------------------------------------------------------- ImageNet validation

FAKE_WNIDS = [f"n{number:08d}" for number in range(0, 100, 10)]  # 10 sorted fake wnids
FAKE_INDEX = {wnid: label for label, wnid in enumerate(FAKE_WNIDS)}


def make_val_folder(val_dir, wnids, per_class=2):
    for wnid in wnids:
        for number in range(per_class):
            write_png(val_dir / wnid / f"ILSVRC2012_val_{number:08d}.JPEG.png", random_image(2, 2))


@pytest.mark.parametrize("below", ["val", "."])
def test_find_imagenet_val_accepts_the_parent_or_the_val_folder_itself(tmp_path, below):
    val_dir = tmp_path / below
    make_val_folder(val_dir, FAKE_WNIDS[:2])
    assert data.find_imagenet_val(tmp_path).resolve() == val_dir.resolve()
    assert data.find_imagenet_val(val_dir).resolve() == val_dir.resolve()


def test_find_imagenet_val_explains_the_expected_layout(tmp_path):
    (tmp_path / "val" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="no ImageNet validation folder under") as raised:
        data.find_imagenet_val(tmp_path)
    assert f"{tmp_path / 'val'}/<wnid>/*.JPEG" in str(raised.value)
    with pytest.raises(ValueError, match="does not exist"):
        data.find_imagenet_val(tmp_path / "missing")


def test_find_imagenet_val_hints_at_flat_validation_images(tmp_path):
    write_png(tmp_path / "val" / "ILSVRC2012_val_00000001.png", random_image(2, 2))
    with pytest.raises(ValueError, match="lie flat"):
        data.find_imagenet_val(tmp_path)


def test_imagenet_samples_label_is_the_position_among_all_wnids_not_the_folders_present(tmp_path):
    present = [FAKE_WNIDS[7], FAKE_WNIDS[2], FAKE_WNIDS[9]]
    make_val_folder(tmp_path / "val", present, per_class=2)
    (tmp_path / "val" / ".hidden").mkdir()  # ignored, like editor or OS metadata folders

    samples = data.imagenet_samples(tmp_path, class_index=FAKE_INDEX)

    assert [label for _, label in samples] == [2, 2, 7, 7, 9, 9]
    assert all(path.parent.name == FAKE_WNIDS[label] for path, label in samples)
    assert samples == sorted(samples, key=lambda sample: (sample[1], str(sample[0])))


def test_imagenet_samples_uses_the_real_ilsvrc_index(tmp_path):
    pytest.importorskip("repro.classes")
    # Known ILSVRC-2012 labels: goldfish 1, balloon 417, toilet tissue 999.
    make_val_folder(tmp_path, ["n15075141", "n01443537", "n02782093"], per_class=1)
    samples = data.imagenet_samples(tmp_path)
    assert [(path.parent.name, label) for path, label in samples] == [
        ("n01443537", 1), ("n02782093", 417), ("n15075141", 999)]


def test_imagenet_samples_names_unknown_subfolders(tmp_path):
    make_val_folder(tmp_path / "val", FAKE_WNIDS[:2])
    (tmp_path / "val" / "n99999999").mkdir()
    (tmp_path / "val" / "extra").mkdir()
    with pytest.raises(ValueError, match="not ILSVRC-2012 class wnids: extra, n99999999"):
        data.imagenet_samples(tmp_path, class_index=FAKE_INDEX)


def test_imagenet_samples_warns_about_images_outside_class_folders(tmp_path, caplog):
    make_val_folder(tmp_path / "val", FAKE_WNIDS[:1], per_class=1)
    write_png(tmp_path / "val" / "stray.png", random_image(2, 2))
    with caplog.at_level(logging.WARNING, logger="repro.data"):
        samples = data.imagenet_samples(tmp_path, class_index=FAKE_INDEX)
    assert len(samples) == 1 and "stray.png" in caplog.text


# ----------------------------------------------------------------------------------------- selection

def fake_samples(class_sizes):
    """(path, label) pairs without files: selection never touches the filesystem."""
    return [(f"/data/val/{label:03d}/img{number:02d}.JPEG", label)
            for label, size in class_sizes.items() for number in range(size)]


def test_select_images_takes_one_image_per_class_while_classes_last():
    samples = fake_samples({label: 5 for label in range(20)})
    selected = data.select_images(samples, 10, seed=0)
    assert len(selected) == 10
    assert len({label for _, label in selected}) == 10
    assert set(selected) <= set(samples)

    selected = data.select_images(samples, 30, seed=0)
    counts = np.bincount([label for _, label in selected], minlength=20)
    assert len(set(selected)) == 30 and counts.min() == 1 and counts.max() == 2


def test_select_images_is_deterministic_and_independent_of_listing_order():
    samples = fake_samples({label: 3 + label % 4 for label in range(30)})
    reference = data.select_images(samples, 25, seed=7)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert data.select_images(shuffled, 25, seed=7) == reference
    assert data.select_images(samples, 25, seed=7) == reference
    assert data.select_images(samples, 25, seed=8) != reference
    assert data.select_images(samples, 40, seed=7)[:25] == reference  # a smaller n is a prefix


def test_select_images_follows_the_documented_rule():
    samples = fake_samples({0: 2, 1: 1, 2: 3})
    rng = np.random.default_rng(5)
    class_order = [[0, 1, 2][i] for i in rng.permutation(3)]
    queues = {label: [(f"/data/val/{label:03d}/img{number:02d}.JPEG", label) for number in rng.permutation(size)]
              for label, size in zip(class_order, [{0: 2, 1: 1, 2: 3}[label] for label in class_order])}
    # Round robin over the shuffled classes, skipping the exhausted ones.
    expected = [queues[label][depth] for depth in range(3) for label in class_order if depth < len(queues[label])]
    assert data.select_images(samples, 6, seed=5) == expected
    assert data.select_images(samples, 4, seed=5) == expected[:4]


def test_select_images_with_too_large_n_returns_all_and_warns(caplog):
    samples = fake_samples({0: 2, 1: 3})
    with caplog.at_level(logging.WARNING, logger="repro.data"):
        selected = data.select_images(samples, 100)
    assert sorted(selected) == sorted(samples)
    assert "only 5" in caplog.text
    with pytest.raises(ValueError):
        data.select_images(samples, 0)
    with pytest.raises(ValueError, match="pairs"):
        data.select_images(["a.jpg", "b.jpg"], 1)  # a string's second character is no label


# ------------------------------------------------------------------------------------------- batches

def test_iterate_batches_skips_and_reports_an_unreadable_image(tmp_path, caplog):
    paths = [write_png(tmp_path / f"{index}.png", random_image(30 + index, 40, seed=index)) for index in range(5)]
    paths[2] = tmp_path / "2.jpg"
    paths[2].write_text("not an image")
    items = [(path, label) for label, path in enumerate(paths)]

    with caplog.at_level(logging.WARNING, logger="repro.data"):
        batches = list(data.iterate_batches(items, 2, data.load_image_naive))

    assert [indices for indices, _, _ in batches] == [[0, 1], [3, 4]]
    assert [[index for index, _, _ in skipped] for _, _, skipped in batches] == [[], [2]]
    index, path, error = batches[1][2][0]
    assert path == paths[2] and isinstance(error, data.UnreadableImageError)
    assert str(paths[2]) in caplog.text
    for indices, images, _ in batches:
        assert images.dtype == np.uint8 and images.shape == (2, 224, 224, 3)
        for position, index in enumerate(indices):
            expected = cv2.resize(cv2.imread(str(paths[index])), (224, 224), interpolation=cv2.INTER_CUBIC)
            np.testing.assert_array_equal(images[position], expected)


def test_iterate_batches_reports_trailing_unreadable_images_in_a_last_empty_batch(tmp_path):
    good = write_png(tmp_path / "good.png", random_image(224, 224))
    bad = [tmp_path / "bad1.jpg", tmp_path / "missing.jpg"]
    bad[0].write_text("x")

    batches = list(data.iterate_batches([good, *bad], 1, data.load_image_naive))

    assert len(batches) == 2
    assert batches[0][0] == [0] and batches[0][2] == []
    indices, images, skipped = batches[1]
    assert indices == [] and images.shape == (0, 224, 224, 3)
    assert [(index, path) for index, path, _ in skipped] == [(1, bad[0]), (2, bad[1])]


def test_iterate_batches_keeps_a_short_last_batch():
    batches = list(data.iterate_batches(list(range(5)), 2, lambda value: np.full((3, 3, 3), value, np.uint8)))
    assert [indices for indices, _, _ in batches] == [[0, 1], [2, 3], [4]]
    assert batches[2][1][0, 0, 0, 0] == 4


# ----------------------------------------------------------------------------------------- model space

def test_to_model_space_maps_0_to_minus_1_and_255_to_1_in_nchw():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 255, 128]

    model_space = data.to_model_space(images)

    assert model_space.dtype == np.float32 and model_space.shape == (2, 3, 5, 7)
    assert model_space[0, 0, 0, 0] == -1.0 and model_space[0, 1, 0, 0] == 1.0
    assert model_space.min() >= -1.0 and model_space.max() <= 1.0
    expected = images.astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1.0
    np.testing.assert_allclose(model_space, expected, atol=1e-6)
    assert model_space[1, 2, 4, 6] == pytest.approx(images[1, 4, 6, 2] / 127.5 - 1.0, abs=1e-6)


def test_to_uint8_images_inverts_to_model_space():
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.to_uint8_images(data.to_model_space(images)), images)
    # Beyond the range clips; half a pixel level rounds to the nearest level.
    outside = np.full((1, 3, 1, 1), 1.5, np.float32)
    assert (data.to_uint8_images(outside) == 255).all()
    assert data.to_uint8_images(np.full((1, 3, 1, 1), 2 * 10.2 / 255 - 1, np.float32))[0, 0, 0, 0] == 10


def test_only_regular_files_are_read_and_links_are_named_for_what_they_are(tmp_path):
    """A named pipe would block the reader forever; a link loop is not 'no such file'."""
    import os
    import signal
    from repro import data
    os.mkfifo(tmp_path / "pipe.JPEG")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    previous = signal.signal(signal.SIGALRM, hang_fails)
    signal.alarm(60)
    try:
        for name, reason in (("pipe.JPEG", "not a regular file (a named pipe)"), ("loop.png", "a loop of symbolic links"),
                             ("dangling.png", "a broken symbolic link"), ("absent.png", "no such file")):
            with pytest.raises(data.UnreadableImageError) as error:
                data.read_image_bgr(tmp_path / name)
            assert error.value.reason == reason
        assert sorted(p.name for p in data.list_image_files(tmp_path)) == ["dangling.png", "loop.png", "pipe.JPEG"]
        assert data.list_image_files(tmp_path / "loop.png") == [tmp_path / "loop.png"]   # reported by the reader
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def hang_fails(signum, frame):
    raise TimeoutError("reading blocked: a named pipe or device was read as an image")
