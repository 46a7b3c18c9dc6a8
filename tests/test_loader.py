import numpy as np
import pytest

from hipx.data import filenames
from hipx.data import imaging
from hipx.data import loader


def test_enhance_is_bounded_and_differs_from_input():
    rng = np.random.default_rng(0)
    gray = np.clip(0.4 + 0.1 * rng.standard_normal((64, 37)), 0, 1).astype(np.float32)
    out = loader.enhance(gray)
    assert out.shape == gray.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1 and not np.allclose(out, gray)


def test_clinical_stats_from_train_only_applied_to_val(tiny_data):
    train = [filenames.decode(p) for p in loader.list_split(tiny_data, "train")]
    stats = loader.ClinicalStats.fit(train)
    ages = np.array([i.age for i in train])
    assert stats.mean[1] == pytest.approx(ages.mean()) and stats.std[1] == pytest.approx(ages.std())
    val = loader.HipDataset(loader.list_split(tiny_data, "val"), stats, (32, 20))
    for i, info in enumerate(val.infos):
        expected_age = (info.age - stats.mean[1]) / stats.std[1]
        assert val[i]["clinical"][1].item() == pytest.approx(expected_age, rel=1e-5)
        if np.isnan(info.bmi):  # missing -> imputed with the train mean -> 0 after normalisation
            assert val[i]["clinical"][2].item() == 0.0


def test_stats_round_trip():
    stats = loader.ClinicalStats([0.7, 60.0, 25.0], [0.4, 10.0, 4.0])
    assert loader.ClinicalStats.from_dict(stats.to_dict()) == stats


@pytest.mark.parametrize("early_fuse", [False, True])
def test_sample_channels(tiny_data, early_fuse):
    files = loader.list_split(tiny_data, "train")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in files])
    ds = loader.HipDataset(files, stats, (40, 24), early_fuse=early_fuse)
    sample = ds[3]
    assert set(sample) == {"image", "clinical", "label", "measure", "path", "index"} and sample["index"] == 3
    assert sample["measure"].isnan()  # no measurement given: NaN
    assert sample["image"].shape == (5 if early_fuse else 2, 40, 24) and ds.channels == sample["image"].shape[0]
    assert sample["label"].item() == filenames.decode(files[3]).label
    image = sample["image"].numpy()
    original = loader.prepare(imaging.read_scaled(files[3]), (40, 24))
    np.testing.assert_allclose(image[:2], original, atol=1 / 255 + 1e-6)  # cache is uint8
    if early_fuse:
        for c in range(3):  # constant planes holding the normalised clinical values
            assert np.all(image[2 + c] == sample["clinical"][c].item())


def test_cache_matches_decoding_on_every_read(tiny_data):
    files = loader.list_split(tiny_data, "val")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in files])
    cached = loader.HipDataset(files, stats, (32, 20))
    direct = loader.HipDataset(files, stats, (32, 20), cache_gb=0)
    assert cached.cache is not None and direct.cache is None
    for i in range(len(files)):
        np.testing.assert_array_equal(cached[i]["image"], direct[i]["image"])


def test_augment_seeded_by_epoch_and_index(tiny_data):
    files = loader.list_split(tiny_data, "train")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in files])
    calls = []
    ds = loader.HipDataset(files, stats, (32, 20), augment=lambda img, rng: calls.append(rng.random()) or img)
    ds[0], ds[0]
    ds.set_epoch(1)
    ds[0]
    assert calls[0] == calls[1] != calls[2]


def _noise(image, rng):
    return np.clip(image + rng.normal(0, 0.1, image.shape).astype(np.float32), 0, 1)


def test_persistent_workers_see_each_new_epoch(tiny_data):
    """set_epoch in the main process reaches workers that outlive the epoch (persistent_workers)."""
    import torch
    from torch.utils.data import DataLoader

    files = loader.list_split(tiny_data, "train")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in files])
    ds = loader.HipDataset(files, stats, (32, 20), augment=_noise)
    dl = DataLoader(ds, batch_size=len(ds), num_workers=2, persistent_workers=True)
    seen = []
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        (batch,) = list(dl)
        expected = torch.stack([ds[i]["image"] for i in range(len(ds))])  # the main process's draw
        assert torch.equal(batch["image"], expected)
        seen.append(batch["image"])
    assert not torch.equal(seen[0], seen[1])


def test_missing_and_empty_splits_say_how_to_fix(tmp_path, tiny_data):
    with pytest.raises(FileNotFoundError, match="synthetic.py"):
        loader.list_split(tmp_path / "nothing", "train")
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .png or .npy"):
        loader.list_split(tmp_path / "empty", "val")
    (tiny_data / "val" / "badname.png").write_bytes(b"")
    with pytest.raises(filenames.FileNameError, match="badname.png"):
        loader.list_split(tiny_data, "val")


def _batch(ds, indices):
    from torch.utils.data import default_collate
    return default_collate([ds[i] for i in indices])


@pytest.mark.parametrize("early_fuse", [False, True])
@pytest.mark.parametrize("cache_gb", [4.0, 0.0])
def test_uint8_handover_gives_the_network_identical_inputs(tiny_data, early_fuse, cache_gb):
    """Validation/test inputs: the 8-bit handover finished by network_image equals, bit for bit, the
    float sample the loader built before (uint8 cache / 255 as float32, then constant clinical planes)."""
    import torch

    files = loader.list_split(tiny_data, "val")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in files])
    u8 = loader.HipDataset(files, stats, (40, 24), early_fuse=early_fuse, handover="uint8", cache_gb=cache_gb)
    fl = loader.HipDataset(files, stats, (40, 24), early_fuse=early_fuse, cache_gb=cache_gb)
    batch = _batch(u8, range(len(files)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (len(files), 2, 40, 24)
    built = loader.network_image(batch["image"], batch["clinical"], early_fuse)
    reference = _batch(fl, range(len(files)))["image"]
    assert built.dtype == torch.float32 and torch.equal(built, reference)
    # and both are what the loader computed before the 8-bit handover existed: uint8 / 255 + planes
    for i, path in enumerate(files):
        gray = np.round(loader.prepare(imaging.read_scaled(path), (40, 24)) * 255.0).astype(np.uint8)
        expected = gray.astype(np.float32) / 255.0
        if early_fuse:
            planes = np.broadcast_to(u8.clinical[i][:, None, None], (3, 40, 24))
            expected = np.concatenate([expected, planes])
        np.testing.assert_array_equal(built[i].numpy(), expected)


def test_uint8_handover_rounds_augmented_images_once(tiny_data):
    """Training: the augmented image crosses as 8 bits, within half a grey level of the float one."""
    files = loader.list_split(tiny_data, "train")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in files])
    kw = dict(image_size=(40, 24), early_fuse=True, augment=_noise, seed=3)
    u8 = loader.HipDataset(files, stats, handover="uint8", **kw)
    fl = loader.HipDataset(files, stats, **kw)
    for i in range(4):
        a, b = u8[i], fl[i]
        finished = loader.network_image(a["image"][None], a["clinical"][None], True)[0]
        diff = (finished - b["image"]).abs()
        assert diff[:2].max().item() <= 0.5 / 255 + 1e-6 and diff[:2].max().item() > 0
        assert diff[2:].max().item() == 0  # clinical planes exact
        assert a["image"].nbytes * 10 == b["image"].nbytes  # 2 uint8 channels against 5 float32 ones


def test_handover_must_be_known(tiny_data):
    with pytest.raises(ValueError, match="handover 'fp16'"):
        loader.HipDataset(loader.list_split(tiny_data, "val"), loader.ClinicalStats([0] * 3, [1] * 3), (8, 8),
                          handover="fp16")


def test_workers_drop_the_resource_sharers_broken_handshake_but_report_other_errors():
    """Ctrl-C during a batch's handover broke multiprocessing's resource-sharer handshake in a worker,
    whose thread reported it through sys.excepthook: a traceback under the one-line message."""
    import sys
    previous, reported = sys.excepthook, []
    try:
        sys.excepthook = lambda kind, value, tb: reported.append(str(value))  # what the worker had before
        loader.quiet_worker(0)
        sharer = {}  # a function whose frames say multiprocessing/resource_sharer.py, as that thread's do
        exec(compile("def serve():\n    raise EOFError('handshake broken')\n", "/usr/lib/python3/multiprocessing/"
                     "resource_sharer.py", "exec"), sharer)

        def other():
            raise EOFError("a real problem elsewhere")

        for target in (sharer["serve"], other):
            try:  # as resource_sharer._serve reports its errors
                target()
            except EOFError:
                sys.excepthook(*sys.exc_info())
    finally:
        sys.excepthook = previous
    assert reported == ["a real problem elsewhere"]
