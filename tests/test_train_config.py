"""TrainConfig: presets match the paper (§3.1), bad settings are refused by name (issue #7)."""

from __future__ import annotations

import json

import pytest

from kitsmsan.errors import ConfigError
from kitsmsan.train.config import PRESETS, TrainConfig, parse_overrides, validation_cases


def test_paper_preset_is_the_papers_recipe():
    cfg = TrainConfig.from_preset("paper", variant="msan_v2_ds")
    # MSAN paper §3.1: 4 slices of 512x512 (full plane), batch 2, Adam lr 1e-3 / 10 every 100k, 400k its
    assert (cfg.num_slices, cfg.crop_size, cfg.batch_size) == (4, None, 2)
    assert (cfg.lr, cfg.lr_step, cfg.lr_gamma, cfg.num_iters) == (1e-3, 100_000, 0.1, 400_000)
    assert (cfg.train_cases, cfg.test_cases) == ("0-179", "180-189")  # §2.1
    assert cfg.loss == "dice" and cfg.amp == "auto" and cfg.channels_last
    assert cfg.use_deep_supervision
    assert not TrainConfig.from_preset("paper", variant="msan_v2").use_deep_supervision


@pytest.mark.parametrize(
    "variant,forced,expected",
    [
        ("msan_v1", None, False),
        ("msan_v1_ds", None, True),
        ("unet3d", True, True),
        ("msan_v2_ds", False, False),
    ],
)
def test_deep_supervision_follows_variant_unless_forced(variant, forced, expected):
    assert TrainConfig(variant=variant, deep_supervision=forced).use_deep_supervision is expected


def test_json_round_trip(tmp_path):
    cfg = TrainConfig.from_preset("smoke", variant="unet3d", num_iters=7, model={"base_channels": 4})
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    back = TrainConfig.from_json(path)
    assert back == cfg and back.to_dict() == json.loads(path.read_text())


@pytest.mark.parametrize(
    "overrides,names",
    [
        ({"num_iter": 5}, "'num_iter'"),  # unknown key (typo)
        ({"num_iters": "100"}, "num_iters='100'"),  # wrong type
        ({"num_iters": 2.5}, "num_iters=2.5"),  # float for int
        ({"channels_last": 1}, "channels_last=1"),  # int for bool
        ({"num_iters": -10}, "num_iters=-10"),  # negative
        ({"num_iters": 0}, "num_iters=0"),  # zero
        ({"batch_size": 0}, "batch_size=0"),
        ({"amp": "fp8"}, "amp='fp8'"),  # bad amp value
        ({"variant": "msan_v3"}, "variant='msan_v3'"),  # unknown variant
        ({"lr": 0}, "lr=0"),
        ({"lr_gamma": 1.5}, "lr_gamma=1.5"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"loss": "ce"}, "loss='ce'"),
        ({"fg_fraction": 1.5}, "fg_fraction=1.5"),
    ],
)
def test_bad_settings_raise_config_error_naming_key_and_value(overrides, names):
    with pytest.raises(ConfigError, match=None) as err:
        TrainConfig.from_preset("smoke", **overrides)
    assert names in str(err.value)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="num_iters=-1"):
        TrainConfig(num_iters=-1)


def test_unknown_preset_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="'fast'"):
        TrainConfig.from_preset("fast")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        TrainConfig.from_json(bad)
    bad.write_text(json.dumps({"variant": "msan_v1", "epochs": 3}))
    with pytest.raises(ConfigError, match="'epochs'"):
        TrainConfig.from_json(bad)


def test_replace_validates():
    cfg = TrainConfig()
    assert cfg.replace(num_iters=5).num_iters == 5
    with pytest.raises(ConfigError, match="bogus"):
        cfg.replace(bogus=1)


def test_parse_overrides():
    got = parse_overrides(
        [
            "num_iters=100",
            "amp=bf16",
            "lr=1e-4",
            "crop_size=null",
            "compile=true",
            "model.base_channels=8",
            "ds_weights=[0.5, 0.25, 0.25]",
        ]
    )
    assert got == {
        "num_iters": 100,
        "amp": "bf16",
        "lr": 1e-4,
        "crop_size": None,
        "compile": True,
        "model": {"base_channels": 8},
        "ds_weights": [0.5, 0.25, 0.25],
    }
    with pytest.raises(ConfigError, match="'num_iters'"):
        parse_overrides(["num_iters"])


def test_presets_are_valid_for_every_variant():
    from kitsmsan.train.config import VARIANTS

    for name in PRESETS:
        for variant in VARIANTS:
            assert TrainConfig.from_preset(name, variant=variant).variant == variant


def test_variants_match_the_model_registry():
    from kitsmsan.models import list_models
    from kitsmsan.train.config import VARIANTS

    assert list(VARIANTS) == list_models()


# ----------------------------------------------------------------------- the test cases choose nothing


def _split(train: str, test: str) -> dict[str, list[str]]:
    from kitsmsan.data.dataset import split_cases

    return split_cases(range(300), train=train, test=test)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_validation_and_test_cases_are_disjoint_for_every_preset(name):
    cfg = TrainConfig.from_preset(name)
    split = _split(cfg.train_cases, cfg.test_cases)
    val = validation_cases(split["train"], cfg.eval_cases)
    assert len(val) == min(cfg.eval_cases, len(split["train"]))
    # every preset validates, except the reference, which scores its last checkpoint and never
    # validates (two cores' time goes to training; nothing is chosen on a validation score)
    assert (len(val) > 0) == (name != "cpu-reference")
    assert set(val) <= set(split["train"]) and not set(val) & set(split["test"])


@pytest.mark.parametrize("preset", ["smoke", "paper"])
def test_reproduce_splits_keep_validation_off_the_test_cases(preset):
    from kitsmsan.reproduce import REPRODUCE_DATA

    spec, cfg = REPRODUCE_DATA[preset], TrainConfig.from_preset(preset)
    pairs = (
        [(spec["train"], spec["test"])]
        if preset == "paper"
        else [(spec["pure_train"], spec["pure_test"]), (spec["anatomy_train"], spec["anatomy_test"])]
    )
    for train, test in pairs:
        split = _split(train, test)
        val = validation_cases(split["train"], cfg.eval_cases)
        assert val and not set(val) & set(split["test"]), (train, test)


def test_validation_cases_are_the_last_training_cases():
    ids = [f"case_{i:05d}" for i in range(180)]
    assert validation_cases(ids, 3) == ["case_00177", "case_00178", "case_00179"]  # the paper preset
    assert validation_cases(ids[:2], 3) == ids[:2] and validation_cases(ids, 0) == []


def test_every_paper_setting_is_either_stated_by_the_paper_or_listed_as_ours():
    """No setting of the paper preset passes silently as the paper's."""
    from kitsmsan.train.config import PAPER_STATED, PAPER_UNSTATED

    bookkeeping = {"variant", "data_root", "cache_dir", "run_dir", "progress"}
    fields = set(TrainConfig().to_dict()) - bookkeeping
    assert not set(PAPER_STATED) & set(PAPER_UNSTATED)
    assert set(PAPER_STATED) | set(PAPER_UNSTATED) == fields
    cfg = TrainConfig.from_preset("paper")
    assert (cfg.fg_fraction, cfg.tumor_fraction) == (0.5, 0.25) and "0.5" in PAPER_UNSTATED["fg_fraction"]
    assert "0.25" in PAPER_UNSTATED["tumor_fraction"] and "s = 4" in PAPER_UNSTATED["model"]


def test_a_model_override_is_merged_into_the_presets_model():
    cfg = TrainConfig.from_preset("smoke", **parse_overrides(["model.ds_placement=decoder"]))
    assert cfg.model == {"base_channels": 8, "ds_placement": "decoder"}
    assert TrainConfig.from_preset("smoke", model={"base_channels": 4}).model == {"base_channels": 4}


def test_the_decisions_page_names_what_the_paper_preset_adds():
    from pathlib import Path

    from kitsmsan.train.config import PAPER_UNSTATED

    text = (Path(__file__).parents[1] / "book" / "fragments" / "decisions-training.md").read_text(
        encoding="utf-8"
    )
    for key in (
        "fg_fraction",
        "tumor_fraction",
        "dice_include_background",
        "eval_cases",
        "ds_weights",
        "model",
    ):
        assert key in PAPER_UNSTATED and f"`{key}`" in text, key
    assert "0.5" in text and "0.25" in text and "s = 4" in text
