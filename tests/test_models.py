"""Tests of kitsmsan.models: shapes, rejected inputs, gradients, seeding, registry, pinned sizes (issue #3)."""

from __future__ import annotations

import json

import pytest
import torch

from kitsmsan.errors import ConfigError, DataError
from kitsmsan.losses import DeepSupervisionLoss, DiceLoss
from kitsmsan.models import (
    MSAN,
    ModelConfig,
    MultiScaleAttention,
    Res2NetBlock3d,
    build_model,
    build_model_from_config,
    count_flops,
    count_parameters,
    describe,
    list_models,
    model_report,
)
from kitsmsan.models.report import format_report

NAMES = ["unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds"]
DS_NAMES = {"msan_v1_ds", "msan_v2_ds"}

# --------------------------------------------------------------------------------------------- registry


def test_list_models_is_the_papers_five_in_order():
    assert list_models() == NAMES


@pytest.mark.parametrize(
    "name, attention, res2net, ds",
    [
        ("unet3d", False, False, False),
        ("msan_v1", True, False, False),
        ("msan_v1_ds", True, False, True),
        ("msan_v2", True, True, False),
        ("msan_v2_ds", True, True, True),
    ],
)
def test_registry_switches(name, attention, res2net, ds):
    with torch.device("meta"):
        model = build_model(name)
    cfg = model.config
    assert (cfg.name, cfg.attention, cfg.res2net, cfg.deep_supervision) == (name, attention, res2net, ds)
    assert (model.res2net is not None) == res2net
    assert hasattr(model, "att0") == attention
    assert hasattr(model, "aux_head_u3") == ds and hasattr(model, "aux_head_x4") == ds  # literal placement
    assert not hasattr(model, "aux_head_u2")
    assert describe(name).split(":")[0] in {
        "3D U-Net",
        "MSAN-V1",
        "MSAN-V1 with deep supervision",
        "MSAN-V2",
        "MSAN-V2 with deep supervision",
    }


@pytest.mark.parametrize(
    "name, overrides, fragment",
    [
        ("unet4d", {}, "unet4d"),
        (None, {}, "None"),
        ("msan_v1", {"base_chanels": 8}, "base_chanels"),
        ("msan_v1", {"name": "x"}, "'name'"),
        ("unet3d", {"base_channels": -1}, "base_channels=-1"),
        ("unet3d", {"base_channels": 0}, "base_channels=0"),
        ("unet3d", {"base_channels": 8.0}, "base_channels=8.0"),
        ("unet3d", {"base_channels": True}, "base_channels=True"),
        ("msan_v2", {"res2net_scale": 0}, "res2net_scale=0"),
        ("msan_v2", {"res2net_scale": 1}, "res2net_scale=1"),
        ("msan_v2", {"res2net_scale": 3}, "res2net_scale=3"),  # 512 is not divisible by 3
        ("unet3d", {"max_channels": 16}, "max_channels=16"),
        ("unet3d", {"pool_depth": 5}, "pool_depth=5"),
        ("unet3d", {"norm": "layer"}, "norm='layer'"),
        ("unet3d", {"activation": "gelu"}, "activation='gelu'"),
        ("unet3d", {"attention": "yes"}, "attention='yes'"),
        ("unet3d", {"num_classes": 1}, "num_classes=1"),
        ("unet3d", {"negative_slope": -0.1}, "negative_slope=-0.1"),
    ],
)
def test_build_model_rejects_bad_names_and_overrides(name, overrides, fragment):
    with pytest.raises(ValueError) as info:
        build_model(name, **overrides)
    assert isinstance(info.value, ConfigError)
    assert fragment in str(info.value)


def test_config_round_trip_and_rebuild():
    torch.manual_seed(0)
    model = build_model("msan_v2_ds", base_channels=4, res2net_scale=2)
    data = json.loads(json.dumps(model.config.to_dict()))  # what a checkpoint stores
    assert data["name"] == "msan_v2_ds" and data["base_channels"] == 4 and data["res2net_scale"] == 2
    assert ModelConfig.from_dict(data) == model.config
    rebuilt = build_model_from_config(data)
    rebuilt.load_state_dict(model.state_dict())  # same architecture: every key and shape matches
    assert build_model_from_config(model.config).config == model.config


def test_config_from_dict_names_unknown_key():
    with pytest.raises(ConfigError, match="'widths'"):
        ModelConfig.from_dict({"base_channels": 8, "widths": [1, 2]})
    with pytest.raises(ConfigError, match="mapping"):
        ModelConfig.from_dict([("base_channels", 8)])
    with pytest.raises(ConfigError, match="ModelConfig or a dict"):
        build_model_from_config("unet3d")


def test_channels_and_pooling_follow_the_config():
    assert ModelConfig().channels == (32, 64, 128, 256, 512)
    assert ModelConfig(base_channels=32, max_channels=320).channels == (32, 64, 128, 256, 320)
    assert ModelConfig().pool_sizes == ((1, 2, 2),) * 4
    assert ModelConfig(pool_depth=2).pool_sizes == ((2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
    assert ModelConfig(pool_depth=2).divisor == (4, 16, 16)


# --------------------------------------------------------------------------------------------- shapes

SMALL = (1, 1, 4, 32, 32)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_output_shapes_small(name, mode):
    torch.manual_seed(0)
    model = build_model(name, base_channels=4)
    model.train(mode == "train")
    with torch.no_grad():
        out = model(torch.randn(SMALL))
    if mode == "train" and name in DS_NAMES:
        assert isinstance(out, list)
        # aux_1 from u3 (1/8 of H, W), aux_2 from the bottleneck x4 (1/16): the last two poolings' scales
        assert [tuple(t.shape) for t in out] == [(1, 3, 4, 32, 32), (1, 3, 4, 4, 4), (1, 3, 4, 2, 2)]
    else:
        assert isinstance(out, torch.Tensor)
        assert out.shape == (1, 3, 4, 32, 32)


@pytest.mark.parametrize(
    "overrides, shape, expected",
    [
        ({"pool_depth": 2}, (2, 1, 4, 32, 48), [(2, 3, 4, 32, 48), (2, 3, 1, 4, 6), (2, 3, 1, 2, 3)]),
        ({"pool_depth": 1}, (1, 1, 8, 16, 16), [(1, 3, 8, 16, 16), (1, 3, 4, 2, 2), (1, 3, 4, 1, 1)]),
        (
            {"norm": "group", "activation": "relu"},
            (1, 1, 4, 16, 32),
            [(1, 3, 4, 16, 32), (1, 3, 4, 2, 4), (1, 3, 4, 1, 2)],
        ),
        (
            {"num_classes": 2, "in_channels": 2},
            (1, 2, 2, 16, 16),
            [(1, 2, 2, 16, 16), (1, 2, 2, 2, 2), (1, 2, 2, 1, 1)],
        ),
        (
            {"ds_placement": "decoder"},
            (1, 1, 4, 32, 32),
            [(1, 3, 4, 32, 32), (1, 3, 4, 8, 8), (1, 3, 4, 4, 4)],
        ),
    ],
)
def test_output_shapes_other_configs(overrides, shape, expected):
    model = build_model("msan_v2_ds", base_channels=4, **overrides).train()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert [tuple(t.shape) for t in out] == expected


@pytest.mark.slow
def test_all_five_at_the_papers_input_size():
    """(2, 1, 4, 512, 512), the paper's batch (§3.1), eval mode, reduced width: the real shape path."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 4, 512, 512)
    for name in NAMES:
        model = build_model(name, base_channels=2).eval()
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (2, 3, 4, 512, 512), name
        assert torch.isfinite(logits).all(), name


@pytest.mark.parametrize(
    "shape, overrides, fragment",
    [
        ((1, 1, 4, 30, 32), {}, "multiples of 16"),
        ((1, 1, 4, 32, 8), {}, "multiples of 16"),
        ((1, 1, 4, 0, 32), {}, "multiples of 16"),
        ((1, 1, 3, 32, 32), {"pool_depth": 1}, "multiple of 2"),
        ((1, 1, 4, 32), {}, "5 dimensions"),
        ((1, 4, 32, 32, 1, 1), {}, "5 dimensions"),
        ((1, 2, 4, 32, 32), {}, "1 channel"),
        ((0, 1, 4, 32, 32), {}, "empty batch"),
        ((1, 1, 1, 16, 16), {}, "single voxel"),
        ((1, 1, 4, 16, 16), {"pool_depth": 2}, "single voxel"),
    ],
)
def test_rejected_shapes_raise_value_error_naming_the_shape(shape, overrides, fragment):
    model = build_model("msan_v1", base_channels=2, **overrides)
    with pytest.raises(ValueError) as info:
        model(torch.zeros(shape))
    assert isinstance(info.value, DataError)
    assert str(shape) in str(info.value) and fragment in str(info.value)


def test_rejects_integer_input_and_non_tensors():
    model = build_model("unet3d", base_channels=2)
    with pytest.raises(DataError, match="floating-point"):
        model(torch.zeros(1, 1, 4, 16, 16, dtype=torch.int64))
    with pytest.raises(DataError, match="torch.Tensor"):
        model.check_input([[1.0]])


# --------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_nonzero_gradient(name):
    """One training step: no dead branch (Res2Net, attention and deep-supervision heads really used)."""
    torch.manual_seed(1)
    model = build_model(name, base_channels=4).train()
    x = torch.randn(2, 1, 4, 32, 32)
    target = torch.randint(0, 3, (2, 4, 32, 32))
    loss = DeepSupervisionLoss(DiceLoss(include_background=True))(model(x), target)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    if name in DS_NAMES:
        assert model.aux_head_u3.weight.grad.abs().sum() > 0
    if "v2" in name:
        assert any(n.startswith("res2net.convs.2") for n, _ in model.named_parameters())


def test_same_seed_same_weights_and_output_other_seed_differs():
    x = torch.randn(1, 1, 4, 32, 32)

    def make(seed):
        torch.manual_seed(seed)
        model = build_model("msan_v2_ds", base_channels=4).eval()
        with torch.no_grad():
            return model.state_dict(), model(x)

    (w1, y1), (w2, y2), (w3, y3) = make(7), make(7), make(8)
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)


# --------------------------------------------------------------------------------------------- blocks


def test_multiscale_attention_formula_by_hand():
    """weights = sigmoid(x + up(conv1x1(g))), enhanced = x * weights (§2.2, Fig. 1)."""
    att = MultiScaleAttention(fine_channels=1, coarse_channels=2)
    with torch.no_grad():
        att.project.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1))
        att.project.bias.fill_(0.5)
    x = torch.tensor([0.0, 1.0, -2.0, 3.0]).view(1, 1, 1, 2, 2)
    g = torch.stack([torch.full((1, 1, 1), 2.0), torch.full((1, 1, 1), 1.5)]).view(1, 2, 1, 1, 1)
    # projected g = 2 - 1.5 + 0.5 = 1 everywhere after upsampling to 2x2
    att.record = True
    out = att(x, g)
    expected_w = torch.sigmoid(torch.tensor([1.0, 2.0, -1.0, 4.0])).view(1, 1, 1, 2, 2)
    assert torch.allclose(att.last_weights, expected_w)
    assert torch.allclose(out, x * expected_w)
    assert not att.last_weights.requires_grad


def test_attention_weights_are_not_recorded_by_default():
    att = MultiScaleAttention(2, 4)
    att(torch.randn(1, 2, 2, 4, 4), torch.randn(1, 4, 2, 2, 2))
    assert att.last_weights is None


def test_attention_maps_shapes_and_range():
    torch.manual_seed(0)
    model = build_model("msan_v1_ds", base_channels=4).train()
    maps = model.attention_maps(torch.randn(2, 1, 4, 32, 32))
    assert sorted(maps) == [0, 1, 2, 3]
    for level, w in maps.items():
        assert w.shape == (2, 4 * 2**level, 4, 32 // 2**level, 32 // 2**level)
        assert ((w > 0) & (w < 1)).all()
    assert model.training  # mode untouched
    assert all(not layer.record and layer.last_weights is None for layer in model.attention_layers.values())
    with pytest.raises(ConfigError, match="no attention"):
        build_model("unet3d", base_channels=2).attention_maps(torch.randn(1, 1, 4, 16, 16))


def test_res2net_block_shapes_and_validation():
    block = Res2NetBlock3d(8, 16, scale=4)
    assert block(torch.randn(2, 8, 2, 4, 4)).shape == (2, 16, 2, 4, 4)
    assert len(block.convs) == 3 and block.width == 4
    assert isinstance(Res2NetBlock3d(16, 16, scale=2).shortcut, torch.nn.Identity)
    with pytest.raises(ConfigError, match="res2net_scale=1"):
        Res2NetBlock3d(8, 16, scale=1)
    with pytest.raises(ConfigError, match="not divisible"):
        Res2NetBlock3d(8, 18, scale=4)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_res2net_hierarchy_widens_the_receptive_field(scale):
    """Group i passes through i-1 chained 3x3x3 convs, so the block sees (scale-1) voxels around a voxel.

    With batch norm in eval mode (a per-channel affine map) the block is local, and a change at one
    voxel must reach exactly ``scale - 1`` voxels away in H and no further.
    """
    torch.manual_seed(0)
    block = Res2NetBlock3d(4, 4 * scale, scale=scale, norm="batch").eval()
    x = torch.randn(1, 4, 1, 1, 15)
    x2 = x.clone()
    x2[..., 7] += 10.0
    with torch.no_grad():
        changed = (block(x2) - block(x)).abs().amax(dim=(0, 1, 2, 3)) > 1e-6
    assert changed.nonzero().flatten().tolist() == list(range(7 - (scale - 1), 7 + scale))


# --------------------------------------------------------------------------------------------- sizes


def _expected_parameters(cfg: ModelConfig) -> int:
    """Parameter count of an MSAN by hand: conv 27·in·out (no bias), norm 2·C, upconv 4·in·out + out."""
    c0, c1, c2, c3, c4 = c = cfg.channels
    k = cfg.num_classes

    def block(i, o):
        return 27 * i * o + 2 * o + 27 * o * o + 2 * o

    n = block(cfg.in_channels, c0) + sum(block(c[i - 1], c[i]) for i in range(1, 5))
    n += sum(4 * c[i + 1] * c[i] + c[i] + block(2 * c[i], c[i]) for i in range(4))
    n += c0 * k + k
    if cfg.attention:
        n += sum(c[i + 1] * c[i] + c[i] for i in range(4))
    if cfg.res2net:
        s = cfg.res2net_scale
        w = c4 // s
        n += (c3 * c4 + 2 * c4) + (s - 1) * (27 * w * w + 2 * w) + (c4 * c4 + 2 * c4)
        n += c3 * c4 + 2 * c4 if c3 != c4 else 0
    if cfg.deep_supervision:  # one 1x1x1 head (with bias) per supervised map
        read = {"pooling": (c3, c4), "decoder": (c2, c3)}[cfg.ds_placement]
        n += sum(width * k + k for width in read)
    return n


def _expected_macs(cfg: ModelConfig, d: int, h: int, w: int) -> int:
    """Multiply-accumulates of one eval forward by hand (pool_depth = 0: D constant)."""
    c = cfg.channels
    vox = [d * (h // 2**i) * (w // 2**i) for i in range(5)]

    def block(i, o, v):
        return 27 * (i * o + o * o) * v

    m = block(cfg.in_channels, c[0], vox[0]) + sum(block(c[i - 1], c[i], vox[i]) for i in range(1, 5))
    m += sum(4 * c[i + 1] * c[i] * vox[i + 1] + block(2 * c[i], c[i], vox[i]) for i in range(4))
    m += c[0] * cfg.num_classes * vox[0]
    if cfg.attention:
        m += sum(c[i + 1] * c[i] * vox[i + 1] for i in range(4))
    if cfg.res2net:
        s, c3, c4 = cfg.res2net_scale, c[3], c[4]
        m += (c3 * c4 + (s - 1) * 27 * (c4 // s) ** 2 + c4 * c4 + c3 * c4) * vox[4]
    return m


#: parameters at the default base width 32 (pinned; also checked against the hand formula)
PINNED_PARAMETERS = {
    "unet3d": 21_882_019,
    "msan_v1": 22_056_579,
    "msan_v1_ds": 22_058_889,
    "msan_v2": 23_911_811,
    "msan_v2_ds": 23_914_121,
}
#: forward FLOPs (2 x MACs of convolutions) of one (1, 1, 4, 512, 512) window at base width 32
PINNED_FLOPS = {
    "unet3d": 1_120_852_246_528,
    "msan_v1": 1_125_147_213_824,
    "msan_v1_ds": 1_125_147_213_824,
    "msan_v2": 1_140_313_817_088,
    "msan_v2_ds": 1_140_313_817_088,
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_pinned_and_by_hand(name):
    with torch.device("meta"):
        model = build_model(name)
    assert count_parameters(model) == PINNED_PARAMETERS[name]
    assert count_parameters(model) == _expected_parameters(model.config)
    small = build_model(name, base_channels=4, max_channels=16, res2net_scale=2)
    assert count_parameters(small) == _expected_parameters(small.config)
    if name in DS_NAMES:  # the decoder placement: heads on u2 (128 ch) and u3 (256 ch) instead
        with torch.device("meta"):
            decoder = build_model(name, ds_placement="decoder")
        assert count_parameters(decoder) == PINNED_PARAMETERS[name] - (256 * 3 + 512 * 3) + (
            128 * 3 + 256 * 3
        )
        assert count_parameters(decoder) == _expected_parameters(decoder.config)


@pytest.mark.parametrize("name", NAMES)
def test_flops_pinned_and_by_hand(name):
    with torch.device("meta"):
        model = build_model(name)
    flops = count_flops(model, (1, 1, 4, 512, 512))
    assert flops == PINNED_FLOPS[name]
    assert flops == 2 * _expected_macs(model.config, 4, 512, 512)


def test_count_flops_copies_a_real_model_to_meta():
    torch.manual_seed(0)
    model = build_model("msan_v2", base_channels=4).train()
    flops = count_flops(model, (1, 1, 4, 32, 32))
    assert flops == 2 * _expected_macs(model.config, 4, 32, 32)
    assert model.training and not next(model.parameters()).is_meta


def test_model_report_rows_and_table():
    rows = model_report(input_shape=(1, 1, 4, 64, 64), base_channels=4)
    assert [r["name"] for r in rows] == NAMES
    for row in rows:
        assert row["eval_output_shapes"] == [[1, 3, 4, 64, 64]]
        n_train = 3 if row["name"] in DS_NAMES else 1
        assert len(row["train_output_shapes"]) == n_train
        assert row["macs"] * 2 == row["flops"]
        assert row["config"]["base_channels"] == 4
    assert rows[4]["train_output_shapes"][1:] == [[1, 3, 4, 8, 8], [1, 3, 4, 4, 4]]  # 1/8 and 1/16
    table = format_report(rows)
    assert all(name in table for name in NAMES) and "3x4x64x64 + 3x4x8x8 + 3x4x4x4" in table
    with pytest.raises(DataError, match="multiples of 16"):
        model_report(["unet3d"], input_shape=(1, 1, 4, 60, 64))


def test_models_command_writes_json(tmp_path, capsys):
    from kitsmsan.cli import main

    out = tmp_path / "models.json"
    rc = main(["models", "--base-channels", "4", "--input-shape", "1,1,4,32,32", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == NAMES
    assert rows[0]["parameters"] == _expected_parameters(ModelConfig(base_channels=4))
    assert "msan_v2_ds" in capsys.readouterr().out
    rc = main(["models", "--base-channels", "0", "--json", str(tmp_path / "bad.json")])
    assert rc == 2 and not (tmp_path / "bad.json").exists()
    assert "base_channels=0" in capsys.readouterr().err


def test_msan_requires_a_model_config():
    with pytest.raises(ConfigError, match="ModelConfig"):
        MSAN({"base_channels": 4})


# --------------------------------------------------------------------------------------------- wiring


def _record(model, names):
    """Forward hooks storing each named submodule's inputs and output of the next call."""
    seen, handles = {}, []
    for name in names:
        module = model.get_submodule(name)
        handles.append(
            module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, (args, out)))
        )
    return seen, handles


def test_attention_is_gated_by_the_decoder_map_one_level_deeper():
    """att_l(x_l, g): x_l the encoder skip, g = u_{l+1} (the bottleneck x4 for l = 3), never an encoder map."""
    torch.manual_seed(0)
    model = build_model("msan_v2", base_channels=4).eval()
    names = [
        "enc0",
        "enc1",
        "enc2",
        "enc3",
        "enc4",
        "res2net",
        "dec3",
        "dec2",
        "dec1",
        "att0",
        "att1",
        "att2",
        "att3",
    ]
    seen, handles = _record(model, names)
    with torch.no_grad():
        model(torch.randn(SMALL))
    for h in handles:
        h.remove()
    x4 = seen["enc4"][1] + seen["res2net"][1]
    gates = {3: x4, 2: seen["dec3"][1], 1: seen["dec2"][1], 0: seen["dec1"][1]}
    for level in range(4):
        fine, gate = seen[f"att{level}"][0]
        assert torch.equal(fine, seen[f"enc{level}"][1]), level  # the recalibrated map is the encoder skip
        assert torch.equal(gate, gates[level]), level  # ... gated by the decoder (or the bottleneck)


@pytest.mark.parametrize("name", DS_NAMES)
@pytest.mark.parametrize("placement", ["pooling", "decoder"])
def test_deep_supervision_heads_read_the_stated_maps(name, placement):
    """pooling: u3 (1/8) and the bottleneck x4 after the Res2Net fusion (1/16); decoder: u2 and u3."""
    torch.manual_seed(0)
    model = build_model(name, base_channels=4, ds_placement=placement).train()
    names = ["enc4", "dec3", "dec2"] + (["res2net"] if model.res2net is not None else [])
    seen, handles = _record(model, names)
    with torch.no_grad():
        _, aux_1, aux_2 = model(torch.randn(SMALL))
    for h in handles:
        h.remove()
    x4 = seen["enc4"][1] + (seen["res2net"][1] if model.res2net is not None else 0)
    if placement == "pooling":
        expected = (model.aux_head_u3(seen["dec3"][1]), model.aux_head_x4(x4))
    else:
        expected = (model.aux_head_u2(seen["dec2"][1]), model.aux_head_u3(seen["dec3"][1]))
    torch.testing.assert_close(aux_1, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(aux_2, expected[1], rtol=0, atol=0)


def test_res2net_first_split_passes_through_unchanged():
    """y_1 = x_1: the first quarter of the concatenation is the first split of the 1x1x1 reduction."""
    torch.manual_seed(0)
    block = Res2NetBlock3d(8, 16, scale=4).eval()
    seen, handles = _record(block, ["reduce", "expand"])
    with torch.no_grad():
        block(torch.randn(1, 8, 2, 4, 4))
    for h in handles:
        h.remove()
    concat = seen["expand"][0][0]
    torch.testing.assert_close(concat[:, :4], seen["reduce"][1][:, :4], rtol=0, atol=0)
    assert not torch.allclose(concat[:, 4:8], seen["reduce"][1][:, 4:8])  # y_2 = K_2(x_2) differs


def test_ds_placement_is_validated():
    with pytest.raises(ConfigError, match="ds_placement"):
        ModelConfig(ds_placement="encoder")


def test_attention_with_zero_gating_is_silu():
    """g = 0 and a zero projection bias: x * sigmoid(x + 0) = SiLU(x), as the layer's docstring says."""
    torch.manual_seed(0)
    layer = MultiScaleAttention(4, 8)
    torch.nn.init.zeros_(layer.project.bias)
    x = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        out = layer(x, torch.zeros(1, 8, 2, 2, 2))
    torch.testing.assert_close(out, torch.nn.functional.silu(x))
