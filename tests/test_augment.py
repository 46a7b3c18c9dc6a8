import pickle

import cv2
import elasticdeform
import numpy as np
import pytest

import augment

NAMES = list(augment.AUGMENTATIONS)
ALL = ",".join(NAMES)  # the combination: one of them per augmented sample
H, W = 64, 37


def toy_enhance(gray: np.ndarray) -> np.ndarray:
    """Stand-in for loader.enhance: a non-trivial, non-linear [0, 1] -> [0, 1] map."""
    return np.sqrt(np.clip(gray, 0.0, 1.0)).astype(np.float32)


def identity(gray: np.ndarray) -> np.ndarray:
    return gray.copy()


def make_image(seed: int = 0, same_channels: bool = False) -> np.ndarray:
    """(2, H, W) float32 with a bright 'bone', texture, exact 0 and 1 values (for clipping) and a
    left/right asymmetry; channel 1 = toy_enhance(channel 0) or an exact copy of channel 0."""
    rng = np.random.default_rng(seed)
    gray = rng.uniform(0.05, 0.35, (H, W)).astype(np.float32)
    gray[20:50, 8:20] = 0.8
    gray[5:9, 30:34] = 1.0
    gray[60:, :3] = 0.0
    return np.stack([gray, gray.copy() if same_channels else toy_enhance(gray)])


def augmenter(spec: str, p: float = 1.0, enhance=toy_enhance) -> augment.Augmenter:
    return augment.Augmenter(augment.parse_augment(spec), p=p, enhance=enhance)


@pytest.mark.parametrize("spec", NAMES + [ALL])
def test_shape_dtype_range_and_input_untouched(spec):
    image = make_image()
    before = image.copy()
    aug = augmenter(spec)
    for index in range(4):
        out, name = aug.apply(image, np.random.default_rng([0, 0, index]))
        assert name in spec.split(",")
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert out is not image
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("spec", NAMES + [ALL])
def test_channels_stay_aligned(spec):
    """Identical channels stay identical: every channel moves the same way (elastic and the
    photometric ones recompute channel 1 with enhance = identity, so the same holds)."""
    image = make_image(same_channels=True)
    aug = augmenter(spec, enhance=identity)
    for index in range(4):
        out, name = aug.apply(image, np.random.default_rng([1, 0, index]))
        assert name is not None
        np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("name", ["elastic", "gamma", "contrast", "noise"])
def test_enhanced_channel_recomputed_from_changed_radiograph(name):
    image = make_image()
    out = augmenter(name)(image, np.random.default_rng(3))
    assert not np.allclose(out[0], image[0])
    np.testing.assert_allclose(out[1], toy_enhance(out[0]), atol=1e-6)


@pytest.mark.parametrize("name", ["gamma", "contrast", "noise"])
def test_photometric_without_enhance_changes_every_channel_alike(name):
    image = make_image(same_channels=True)
    out = augment.AUGMENTATIONS[name](image, np.random.default_rng(4))
    assert not np.allclose(out[0], image[0])
    np.testing.assert_array_equal(out[0], out[1])


def dot_image() -> np.ndarray:
    gray = np.full((H, W), 0.2, np.float32)
    gray[30:33, 17:20] = 0.7  # low enough that cubic overshoot is not clipped at 1
    return np.stack([gray, 0.5 * gray + 0.25])  # channel 1 differs from channel 0, linearly


def centroid(channel: np.ndarray) -> np.ndarray:
    weight = np.clip(channel - np.median(channel), 0, None)
    ys, xs = np.indices(channel.shape)
    return np.array([(weight * ys).sum(), (weight * xs).sum()]) / weight.sum()


def test_cat_elastic_moves_the_dot_identically_in_both_channels():
    image = dot_image()
    shifts = []
    for seed in range(10):
        out = augment.cat_elastic(image, np.random.default_rng(seed))
        assert np.abs(out - image).max() > 0.01  # something moved
        shifts.append(np.linalg.norm(centroid(out[0]) - centroid(image[0])))
        # interpolation is linear in the values, so channel 1 = 0.5 * channel 0 + 0.25 still holds
        np.testing.assert_allclose(out[1], 0.5 * out[0] + 0.25, atol=1e-5)
        np.testing.assert_allclose(centroid(out[1]), centroid(out[0]), atol=1e-3)
    assert np.median(shifts) > 0.5  # pixels; sigma is 0.02 * 37 = 0.74 px at this size


def test_warp_grid_reproduces_elasticdeform():
    displacement = np.clip(np.random.default_rng(5).normal(0, 3.0, (2, 4, 4)), -4, 4)
    ys, xs = np.indices((H, W))
    # on a coordinate ramp the output is the sampling position x + d(x): the displacement field
    # must be elasticdeform's, up to cv2.remap's 1/32 pixel steps and its cubic kernel (a = -0.75,
    # ~0.06 px off on a ramp). Compared 8 px from the border, so that no position is mirrored.
    ramp = np.stack([ys / (H - 1), xs / (W - 1)]).astype(np.float32)
    to_pixels = np.array([H - 1, W - 1])[:, None, None]
    ours = augment.warp_grid(ramp, displacement) * to_pixels
    reference = np.stack(elasticdeform.deform_grid(list(ramp), displacement, order=3, mode="mirror")) * to_pixels
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(reference - np.stack([ys, xs]))[inner].max() > 2  # the warp is not trivial
    np.testing.assert_allclose(ours[inner], reference[inner], atol=0.1)
    # on smooth content the two cubic kernels agree to about one grey level
    smooth = np.stack([0.5 + 0.3 * np.sin(xs / 5.0) * np.cos(ys / 7.0),
                       0.5 + 0.3 * np.cos(xs / 6.0)]).astype(np.float32)
    reference = np.stack(elasticdeform.deform_grid(list(smooth), displacement, order=3, mode="mirror"))
    np.testing.assert_allclose(augment.warp_grid(smooth, displacement), reference, atol=1.5 / 255)


def test_elastic_displacement_scales_with_image_size():
    small = augment.random_displacement((2, 64, 37), np.random.default_rng(0))
    large = augment.random_displacement((2, 704, 407), np.random.default_rng(0))
    np.testing.assert_allclose(large / small, 407 / 37)


def test_flip_is_left_right_only():
    image = make_image()
    out = augment.flip(image, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image[..., ::-1])
    assert not np.array_equal(out, image[:, ::-1, :])


def test_cut_fills_one_patch_with_the_channel_means():
    image = make_image()
    out = augment.cut(image, np.random.default_rng(6))
    changed = np.any(out != image, axis=0)
    ys, xs = np.nonzero(changed)
    box = np.zeros_like(changed)
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    assert 0.05 * H - 1 <= ys.max() - ys.min() + 1 <= 0.15 * H + 1
    patch = out[:, box]
    np.testing.assert_allclose(patch, np.broadcast_to(image.mean(axis=(1, 2))[:, None], patch.shape), atol=1e-6)


def test_rate_of_augmented_samples_is_p_and_names_are_chosen_uniformly():
    image = np.random.default_rng(0).uniform(size=(2, 8, 6)).astype(np.float32)
    aug = augment.Augmenter(["flip", "cut", "crop"], p=0.3)
    applied = [aug.apply(image, np.random.default_rng([0, 0, i]))[1] for i in range(400)]
    rate = np.mean([a is not None for a in applied])
    assert 0.23 <= rate <= 0.37
    for name in ("flip", "cut", "crop"):
        assert applied.count(name) >= 20  # ~40 each expected


def test_p_zero_leaves_every_sample_unchanged():
    image = make_image()
    aug = augmenter(ALL, p=0.0)
    for i in range(20):
        out, name = aug.apply(image, np.random.default_rng(i))
        np.testing.assert_array_equal(out, image)
        assert name is None


@pytest.mark.parametrize("spec", NAMES + [ALL])
def test_same_seed_same_output_other_epoch_other_output(spec):
    image = make_image()
    aug = augmenter(spec)
    first = [aug(image, np.random.default_rng([0, 0, i])) for i in range(3)]
    again = [aug(image, np.random.default_rng([0, 0, i])) for i in range(3)]
    other = [aug(image, np.random.default_rng([0, 1, i])) for i in range(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    differs = any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert differs == (spec != "flip")  # flip has no random parameter


def test_parse_augment():
    assert augment.parse_augment("crop, flip,crop") == ["crop", "flip"]
    assert augment.parse_augment("cat_elastic") == ["cat_elastic"]
    for empty in (None, "", " ", "none", "None"):
        assert augment.parse_augment(empty) == []


@pytest.mark.parametrize("spec", ["xyz", "crop,xyz", "Flip"])
def test_unknown_name_lists_the_valid_ones(spec):
    with pytest.raises(ValueError) as err:
        augment.parse_augment(spec)
    bad = spec.split(",")[-1]
    assert f"unknown augmentation '{bad}'" in str(err.value)
    assert "choose from " + ", ".join(NAMES) + " (comma-separated)" in str(err.value)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.Augmenter([bad], enhance=toy_enhance)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_p_out_of_range_refused(p):
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        augment.Augmenter(["flip"], p=p)


@pytest.mark.parametrize("name", ["elastic", "gamma", "contrast", "noise"])
def test_transforms_that_recompute_channel_1_need_enhance(name):
    with pytest.raises(ValueError, match="enhance"):
        augment.Augmenter(["flip", name], p=0.3)
    augment.Augmenter(["flip", "crop", "rotate", "cut", "cat_elastic"], p=0.3)  # these do not


def test_augmenter_pickles_for_dataloader_workers():
    aug = pickle.loads(pickle.dumps(augmenter(ALL, p=0.5)))
    image = make_image()
    np.testing.assert_array_equal(aug(image, np.random.default_rng(7)),
                                  augmenter(ALL, p=0.5)(image, np.random.default_rng(7)))


def test_preview_writes_a_png(tmp_path):
    source = tmp_path / "hip.png"
    cv2.imwrite(str(source), np.round(make_image()[0] * 255).astype(np.uint8))
    out = tmp_path / "sub" / "preview.png"
    augment.main(["--preview", str(source), "--out", str(out), "--draws", "2", "--size", "32", "20"])
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 500
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["preview.png"]  # no temp file left
