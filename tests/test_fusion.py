"""fusion.py: the fusion mode's one home and what the network receives at inference."""
import pytest
import torch

from hipx.core import fusion


@pytest.mark.parametrize("flags,mode", [((None, None, False), None), (("late", None, False), "late"),
                                        ((None, True, False), "late"), ((None, None, True), "image"),
                                        (("image", None, True), "image"), (("early", None, False), "early"),
                                        ((None, False, False), "early"), (("early", False, False), "early"),
                                        (("late", True, False), "late")])
def test_the_three_flags_name_one_mode(flags, mode):
    """``late_fuse`` None: --late_fuse not given; False names early fusion, as the original work's flag did."""
    assert fusion.from_flags(*flags) == mode


def test_flags_naming_two_modes_are_refused():
    with pytest.raises(ValueError, match="--image_only and --late_fuse True exclude each other"):
        fusion.from_flags(None, True, True)
    with pytest.raises(ValueError, match="--fusion early and --late_fuse True exclude each other"):
        fusion.from_flags("early", True, False)
    with pytest.raises(ValueError, match="--fusion late and --image_only exclude each other"):
        fusion.from_flags("late", None, True)
    with pytest.raises(ValueError, match=r"^--late_fuse False \(early fusion\) and --fusion residual exclude each "
                       "other: give one fusion mode, e.g. only --fusion residual$"):
        fusion.from_flags("residual", False, False)
    with pytest.raises(ValueError, match=r"^--late_fuse False \(early fusion\) and --image_only exclude each other: "
                       "give one fusion mode, e.g. only --fusion image$"):
        fusion.from_flags(None, False, True)


@pytest.mark.parametrize("config,mode", [({"fusion": "late"}, "late"), ({"late_fuse": True}, "late"),
                                         ({"late_fuse": False}, "early"),
                                         ({"late_fuse": False, "image_only": True}, "image")])
def test_saved_configurations_old_and_new_name_their_mode(config, mode):
    assert fusion.of_config(config) == mode


def test_network_inputs_follow_the_mode():
    image, clinical = torch.zeros(2, 5, 8, 4), torch.ones(2, 3)
    assert fusion.network_inputs("early", image, clinical) == (image,)
    assert fusion.network_inputs("image", image, clinical) == (image,)
    late = fusion.network_inputs("late", image, clinical)
    assert late[0] is image and late[1] is clinical
    assert fusion.clinical_input("late", clinical) is clinical and fusion.clinical_input("early", clinical) is None
    with pytest.raises(ValueError, match="late fusion needs the clinical vector"):
        fusion.network_inputs("late", image, None)
    assert [m.uses_clinical for m in fusion.MODES.values()] == [True, True, False, True]
    residual = fusion.network_inputs("residual", image, clinical)  # the clinical model's input beside the image
    assert residual[0] is image and residual[1] is clinical


def test_flip_probability_is_the_mean_of_the_image_and_its_mirror():
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(3, 2, 6, 4, generator=g), "clinical": torch.rand(3, 3, generator=g)}
    weights = torch.rand(6 * 4, generator=g)

    def forward(b):  # not mirror-symmetric, and blind to the clinical values' order
        return (b["image"][:, 0].reshape(3, -1) * weights).sum(1) + b["clinical"].sum(1)

    own = torch.sigmoid(forward(batch))
    mirror = torch.sigmoid(forward({**batch, "image": batch["image"].flip(-1)}))
    assert torch.allclose(fusion.probability(forward, batch, "flip"), (own + mirror) / 2)
    assert torch.equal(fusion.probability(forward, batch, "none"), own)
    assert not torch.allclose(own, mirror)  # the mirror changed something


def test_scored_logit_is_exact_where_the_probability_has_rounded_to_one():
    """fusion.scored's logit: the network's own without TTA; with flip, that of the mean probability,
    computed in log space, so a graded target's predicted value stays finite and ordered where the 32-bit
    probability is 1.0 (a clamped probability made such logits equal: the clipped T-scores of CI)."""
    import torch
    logits = torch.tensor([2.0, 30.0, 40.0, -35.0])
    batch = {"image": torch.zeros(4, 1, 2, 2), "clinical": torch.zeros(4, 3)}
    p, logit = fusion.scored(lambda b: logits, batch, "none")
    assert torch.equal(logit, logits) and torch.equal(p, torch.sigmoid(logits))
    p, logit = fusion.scored(lambda b: logits, batch, "flip")  # both views alike: the logit comes back
    torch.testing.assert_close(logit, logits)
    assert p[1] == p[2] == 1.0 and logit[1] < logit[2]
