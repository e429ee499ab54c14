"""Tests of kitsmsan.losses: hand-computed Dice, MONAI reference, deep supervision (issue #3)."""

from __future__ import annotations

import math

import pytest
import torch

from kitsmsan.errors import ConfigError, DataError
from kitsmsan.losses import DeepSupervisionLoss, DiceLoss, deep_supervision_weights


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One 2x2x2 sample: 4 background, 2 kidney, 2 tumour voxels; the true class gets 1/2, the others 1/4.

    Per class (sums over the 8 voxels):
      kidney:     sum p*t = 2 * 1/2 = 1;  sum p = 4/4 + 2/2 + 2/4 = 2.5;  sum t = 2  ->  Dice = 2/4.5 = 4/9
      tumour:     the same by symmetry                                               ->  Dice = 4/9
      background: sum p*t = 4 * 1/2 = 2;  sum p = 4/2 + 4/4 = 3;        sum t = 4  ->  Dice = 4/7
    """
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]).view(1, 2, 2, 2)
    probs = torch.full((1, 3, 8), 0.25)
    probs[0, target.flatten(), torch.arange(8)] = 0.5
    return torch.log(probs).view(1, 3, 2, 2, 2), target  # softmax(log p) = p since p sums to 1


def test_dice_loss_by_hand_without_background():
    logits, target = _hand_case()
    assert DiceLoss(include_background=False)(logits, target).item() == pytest.approx(1 - 4 / 9, abs=1e-5)


def test_dice_loss_by_hand_with_background_is_the_default():
    logits, target = _hand_case()
    loss = DiceLoss()(logits, target)
    assert loss.item() == pytest.approx(1 - (4 / 7 + 4 / 9 + 4 / 9) / 3, abs=1e-5)  # = 97/189


@pytest.mark.parametrize("preset", ["paper", "smoke"])
def test_the_trained_loss_by_hand(preset):
    """The loss the Trainer builds (build_loss) for each preset is the background-counted Dice: 97/189."""
    import inspect

    from kitsmsan.models import build_model
    from kitsmsan.train import TrainConfig
    from kitsmsan.train.loop import build_loss

    config = TrainConfig.from_preset(preset, variant="msan_v1")
    assert config.dice_include_background is True
    assert (
        inspect.signature(DiceLoss).parameters["include_background"].default == config.dice_include_background
    )
    loss_fn = build_loss(config, build_model("msan_v1", base_channels=4))
    logits, target = _hand_case()
    assert loss_fn(logits, target).item() == pytest.approx(97 / 189, abs=1e-5)


def test_dice_loss_by_hand_batch_versus_per_sample():
    """Sample 2 is all background, predicted so. Batch Dice pools it (kidney/tumour still 4/9);
    per-sample Dice gives sample 2 a Dice of smooth/smooth = 1 for the two absent classes."""
    logits1, target1 = _hand_case()
    logits2 = torch.full((1, 3, 2, 2, 2), -100.0)
    logits2[:, 0] = 100.0
    logits = torch.cat([logits1, logits2])
    target = torch.cat([target1, torch.zeros_like(target1)])
    fg = dict(include_background=False)
    assert DiceLoss(batch=True, **fg)(logits, target).item() == pytest.approx(5 / 9, abs=1e-5)
    assert DiceLoss(batch=False, **fg)(logits, target).item() == pytest.approx(
        1 - (4 / 9 + 4 / 9 + 1 + 1) / 4, abs=1e-5
    )
    dice = DiceLoss(batch=False, **fg).dice(logits, target)
    assert dice.shape == (2, 2)


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 8, 8), (3, 3, 5, 7), (1, 2, 6, 6, 6)])
def test_dice_loss_matches_monai(include_background, batch, shape):
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(sum(shape) + 2 * batch + include_background)
    logits = torch.randn(shape) * 3
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    ours = DiceLoss(include_background=include_background, batch=batch)(logits, target)
    reference = monai_losses.DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        batch=batch,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )(logits, target.unsqueeze(1))
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    # the same with a one-hot float target (the "average" deep-supervision path takes this form)
    onehot = torch.nn.functional.one_hot(target, shape[1]).movedim(-1, 1).float()
    assert DiceLoss(include_background=include_background, batch=batch)(
        logits, onehot
    ).item() == pytest.approx(reference.item(), abs=1e-6)


def test_dice_loss_with_soft_target_matches_monai():
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, 4)
    soft = torch.softmax(torch.randn(2, 3, 4, 4, 4), dim=1)
    ours = DiceLoss(include_background=False, smooth_nr=0.5, smooth_dr=1.0)(logits, soft)
    reference = monai_losses.DiceLoss(
        include_background=False, softmax=True, batch=True, smooth_nr=0.5, smooth_dr=1.0
    )
    assert ours.item() == pytest.approx(reference(logits, soft).item(), abs=1e-6)


def test_perfect_prediction_gives_zero_and_the_opposite_one():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 4, 8, 8))
    onehot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    perfect = DiceLoss(include_background=True)(onehot * 200 - 100, target)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    wrong = DiceLoss(include_background=True)(
        (1 - onehot) * 200 - 100, target
    )  # puts all mass on other classes
    assert wrong.item() == pytest.approx(1.0, abs=1e-6)


def test_dice_loss_in_unit_interval_and_differentiable():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    loss = DiceLoss()(logits, torch.randint(0, 3, (2, 4, 8, 8)))
    assert 0.0 <= loss.item() <= 1.0
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_dice_loss_computes_in_float32_for_half_logits():
    logits, target = _hand_case()
    loss = DiceLoss()(logits.to(torch.bfloat16), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(97 / 189, abs=1e-2)


@pytest.mark.parametrize(
    "logits_shape, target, fragment",
    [
        ((2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), "does not fit"),
        ((2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.long), "does not fit"),
        ((2, 3, 4, 4), torch.full((2, 4, 4), 3), "outside [0, 2]"),
        ((2, 3, 4, 4), torch.full((2, 4, 4), -1), "outside [0, 2]"),
        ((2, 3, 4, 4), torch.zeros(2, 4, 4), "integer labels"),
        ((6,), torch.zeros(6, dtype=torch.long), "(B, C, *spatial)"),
        ((2, 1, 4), torch.zeros(2, 4, dtype=torch.long), "one class only"),
    ],
)
def test_dice_loss_rejects_bad_tensors(logits_shape, target, fragment):
    with pytest.raises(DataError) as info:
        DiceLoss(include_background=False)(torch.zeros(logits_shape), target)
    assert fragment in str(info.value)


def test_dice_loss_rejects_bad_smoothing():
    with pytest.raises(ConfigError, match="smooth_dr=0"):
        DiceLoss(smooth_dr=0)
    with pytest.raises(ConfigError, match="non-negative"):
        DiceLoss(smooth_nr=-1)


# --------------------------------------------------------------------------------------------- deep supervision


def test_deep_supervision_weights_like_nnunet():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(1) == [1.0]
    assert math.fsum(deep_supervision_weights(5)) == pytest.approx(1.0)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match="positive integer"):
            deep_supervision_weights(bad)


def test_resize_target_nearest_and_average_by_hand():
    # one sample, D = 1, 4x4 in-plane
    target = torch.tensor([[0, 1, 2, 2], [1, 1, 2, 0], [0, 0, 1, 1], [0, 2, 1, 0]]).view(1, 1, 4, 4)
    nearest = DeepSupervisionLoss(target_mode="nearest").resize_target(target, (1, 2, 2), 3)
    assert nearest.tolist() == [[[[0, 2], [0, 1]]]]  # first voxel of each 2x2 block
    average = DeepSupervisionLoss(target_mode="average").resize_target(target, (1, 2, 2), 3)
    assert average.shape == (1, 3, 1, 2, 2)
    # block (0, 0) = {0, 1, 1, 1}: fractions (1/4, 3/4, 0); block (1, 0) = {0, 0, 0, 2}: (3/4, 0, 1/4)
    assert average[0, :, 0, 0, 0].tolist() == [0.25, 0.75, 0.0]
    assert average[0, :, 0, 1, 0].tolist() == [0.75, 0.0, 0.25]
    assert torch.allclose(average.sum(1), torch.ones(1, 1, 2, 2))
    assert DeepSupervisionLoss().resize_target(target, (1, 4, 4), 3) is target


@pytest.mark.parametrize("mode", ["nearest", "average"])
def test_deep_supervision_loss_is_the_weighted_sum(mode):
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 4, 16, 16))
    outputs = [torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 2, 2)]
    dice = DiceLoss()
    wrapper = DeepSupervisionLoss(dice, target_mode=mode)
    if mode == "nearest":
        targets = [target, target[:, :, ::4, ::4], target[:, :, ::8, ::8]]
    else:
        onehot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
        targets = [target] + [torch.nn.functional.avg_pool3d(onehot, (1, k, k)) for k in (4, 8)]
    expected = sum(w * dice(o, t) for w, o, t in zip([4 / 7, 2 / 7, 1 / 7], outputs, targets))
    assert wrapper(outputs, target).item() == pytest.approx(expected.item(), abs=1e-6)
    custom = DeepSupervisionLoss(dice, weights=[1.0, 0.0, 0.0], target_mode=mode)
    assert custom(outputs, target).item() == pytest.approx(dice(outputs[0], target).item(), abs=1e-6)


def test_deep_supervision_loss_accepts_a_single_tensor():
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 4, 8, 8), torch.randint(0, 3, (1, 4, 8, 8))
    assert DeepSupervisionLoss()(logits, target).item() == pytest.approx(DiceLoss()(logits, target).item())
    assert DeepSupervisionLoss()([logits], target).item() == pytest.approx(DiceLoss()(logits, target).item())


def test_deep_supervision_loss_errors():
    target = torch.zeros(1, 4, 16, 16, dtype=torch.long)
    outs = [torch.zeros(1, 3, 4, 16, 16), torch.zeros(1, 3, 4, 5, 5)]
    with pytest.raises(DataError, match=r"\(4, 5, 5\) does not evenly divide"):
        DeepSupervisionLoss()(outs, target)
    with pytest.raises(ConfigError, match="2 outputs but 3 weights"):
        DeepSupervisionLoss(weights=[1, 1, 1])(outs, target)
    with pytest.raises(DataError, match="empty"):
        DeepSupervisionLoss()([], target)
    with pytest.raises(ConfigError, match="weights"):
        DeepSupervisionLoss(weights=[-1.0, 1.0])
    with pytest.raises(ConfigError, match="target_mode"):
        DeepSupervisionLoss(target_mode="bilinear")
