"""Device-side augmentation (augment_device.py) against the CPU path (augment.py), on CPU tensors:
the same draws, the same sampling positions, outputs within a few grey levels, the same statistics."""
import cv2
import numpy as np
import pytest
import torch

import augment
from hipx.data import augment_device

H, W = 64, 37
NAMES = list(augment_device.DEVICE_AUGMENTATIONS)


def smooth_image(seed: int = 0) -> np.ndarray:
    """(2, H, W) float32 in [0, 1]: smooth content (so interpolation methods agree) and a bright
    off-centre blob (so every transform visibly moves it)."""
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.uniform(0, 1, (H, W)).astype(np.float32), (0, 0), 3)
    gray = (gray - gray.min()) / (gray.max() - gray.min())
    gray[10:20, 5:12] = np.maximum(gray[10:20, 5:12], 0.9)
    gray = cv2.GaussianBlur(gray, (0, 0), 1)
    return np.stack([gray, np.sqrt(gray)]).astype(np.float32)


def cpu_batch(name: str, image: np.ndarray, seed: int, epoch: int, indices, p: float = 1.0) -> np.ndarray:
    aug = augment.Augmenter([name] if isinstance(name, str) else name, p)
    return np.stack([aug(image, np.random.default_rng([seed, epoch, i])) for i in indices])


@pytest.mark.parametrize("name", NAMES)
def test_same_draw_as_the_cpu_path_within_grey_levels(name):
    image = smooth_image()
    indices = list(range(10))
    dev = augment_device.DeviceAugmenter([name], p=1.0, seed=5)
    out = dev(torch.from_numpy(np.stack([image] * len(indices))), indices, epoch=3).numpy()
    ref = cpu_batch(name, image, 5, 3, indices)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    diff = np.abs(out - ref)
    # cubic convolution on both sides; crop differs a little at the window's edge (cv2.resize repeats
    # the window's border, grid_sample reads the pixels beyond it), rotate by OpenCV's 1/32 px positions
    assert diff.max() < 4 / 255 and diff.mean() < 0.3 / 255, (diff.max() * 255, diff.mean() * 255)
    assert np.abs(out - image).mean() > 2 * diff.mean()  # it did transform the image
    if name == "flip":
        np.testing.assert_array_equal(out, ref)
    if name == "cut":  # the fill is the channel mean, summed in a different order
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_sampling_positions_equal_the_cpu_maps():
    """cat_elastic's positions are augment.warp_grid's map (elasticdeform's field); crop's and
    rotate's are the ones cv2.resize and cv2.warpAffine sample."""
    dev = augment_device.DeviceAugmenter(["cat_elastic"], p=1.0, seed=1)
    ys, xs = np.indices((H, W), dtype=np.float64)
    for index in range(5):
        plan = dev.plan((2, H, W), index, 0)
        rng = np.random.default_rng([1, 0, index])
        assert augment.Augmenter(["cat_elastic"], 1.0).choose(rng) == "cat_elastic"
        d = augment.random_displacement((H, W), rng)
        np.testing.assert_array_equal(plan.displacement, d)
        wy, wx = augment.spline_weights(H, 4), augment.spline_weights(W, 4)
        pos = dev.source_positions([plan], (H, W), torch.device("cpu"))[0].double().numpy()
        np.testing.assert_allclose(pos[..., 1], ys + wy @ d[0] @ wx.T, atol=1e-3)
        np.testing.assert_allclose(pos[..., 0], xs + wy @ d[1] @ wx.T, atol=1e-3)
    # rotate: where cv2.warpAffine takes output pixel (x, y) from
    rot = augment_device.DeviceAugmenter(["rotate"], p=1.0, seed=2)
    plan = rot.plan((2, H, W), 0, 0)
    rng = np.random.default_rng([2, 0, 0])
    augment.Augmenter(["rotate"], 1.0).choose(rng)
    matrix = augment.rotation_matrix((H, W), rng)
    pos = rot.source_positions([plan], (H, W), torch.device("cpu"))[0].double().numpy()
    forward = np.stack([pos[..., 0], pos[..., 1], np.ones_like(pos[..., 0])], -1) @ matrix.T
    np.testing.assert_allclose(forward[..., 0], xs, atol=1e-3)
    np.testing.assert_allclose(forward[..., 1], ys, atol=1e-3)


def test_displacement_and_output_statistics_match_the_cpu_path():
    """Independent draws (different seeds) on both sides: the same share of augmented samples, the
    same mix of transforms, the same spread of elastic displacements and of output intensities."""
    names, p, n = NAMES, 0.3, 400
    image = smooth_image(1)
    dev = augment_device.DeviceAugmenter(names, p=p, seed=11)
    plans = [dev.plan((2, H, W), i, 0) for i in range(n)]
    chosen = [pl.name for pl in plans]
    cpu_aug = augment.Augmenter(names, p)
    cpu_chosen = []
    for i in range(n):
        cpu_chosen.append(cpu_aug.apply(image, np.random.default_rng([12, 0, i]))[1])
    share, cpu_share = np.mean([c is not None for c in chosen]), np.mean([c is not None for c in cpu_chosen])
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(share - p) < 4 * sd and abs(cpu_share - p) < 4 * sd and abs(share - cpu_share) < 5 * sd
    counts = [sum(c == name for c in chosen) for name in names]
    assert min(counts) > 0.5 * share * n / len(names)  # every transform drawn about equally often

    # displacement fields: std of the per-pixel shift over 300 elastic draws, device vs CPU maps
    ela = augment_device.DeviceAugmenter(["cat_elastic"], p=1.0, seed=21)
    pos = ela.source_positions([ela.plan((2, H, W), i, 0) for i in range(300)], (H, W), torch.device("cpu"))
    ys, xs = np.indices((H, W))
    dev_shift = np.stack([pos[..., 1].numpy() - ys, pos[..., 0].numpy() - xs])
    wy, wx = augment.spline_weights(H, 4), augment.spline_weights(W, 4)
    cpu_shift = []
    for i in range(300):
        d = augment.random_displacement((H, W), np.random.default_rng([22, 0, i]))
        cpu_shift.append([wy @ d[0] @ wx.T, wy @ d[1] @ wx.T])
    cpu_shift = np.moveaxis(np.array(cpu_shift), 0, 1)
    dev_sd, cpu_sd = dev_shift.std(axis=1).mean(), cpu_shift.std(axis=1).mean()
    assert abs(dev_sd / cpu_sd - 1) < 0.1, (dev_sd, cpu_sd)
    assert abs(dev_shift.mean()) < 0.1 * dev_sd

    # outputs: the spread of intensities over draws of the whole mix, device vs CPU
    batch = torch.from_numpy(np.stack([image] * 200))
    out = dev(batch, range(200), 1).numpy()
    ref = cpu_batch(names, image, 13, 1, range(200), p=p)
    assert abs(out.std() - ref.std()) < 0.1 * ref.std() and abs(out.mean() - ref.mean()) < 0.02


def test_channels_move_alike_and_unaugmented_samples_are_untouched():
    image = smooth_image()
    image[1] = image[0]
    dev = augment_device.DeviceAugmenter(NAMES, p=0.5, seed=0)
    batch = torch.from_numpy(np.stack([image] * 12))
    out = dev(batch, range(12), 0)
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=0, rtol=0)
    untouched = [i for i in range(12) if dev.plan(image.shape, i, 0).name is None]
    assert untouched and all(torch.equal(out[i], batch[i]) for i in untouched)
    assert torch.equal(batch[0], torch.from_numpy(image))  # the input batch is not modified


def test_names_without_a_device_version_are_refused():
    with pytest.raises(ValueError, match="elastic, gamma have no device version"):
        augment_device.DeviceAugmenter(["flip", "elastic", "gamma"])
    assert augment_device.supported(["flip", "cat_elastic"]) and not augment_device.supported(["noise"])
    with pytest.raises(ValueError, match="float batch"):
        augment_device.DeviceAugmenter(["flip"])(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), [0, 1], 0)
