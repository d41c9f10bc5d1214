"""Tests of reading presets (mri_translate.config.load_config): a preset on a ``base:`` names only what it changes."""

import dataclasses
import re
from pathlib import Path

import pytest

from mri_translate.config import load_config
from mri_translate.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_a_preset_on_a_base_replaces_only_the_keys_it_names(tmp_path):
    (tmp_path / "recipe.yaml").write_text("data: {crop: 64, spacing: 1.0}\nloss: {prior: 10.0, paired: 30.0}\n")
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "no-prior.yaml").write_text(
        "base: ../recipe.yaml\ndata: {spacing: null}\nloss: {prior: 0.0}\ntrain: {iterations: 7}\n")
    config = load_config(tmp_path / "variants" / "no-prior.yaml", {"train": {"seed": 3}})
    assert config.data.crop == 64 and config.data.spacing is None  # null is a value in a preset
    assert config.loss.prior == 0.0 and config.loss.paired == 30.0
    assert config.train.iterations == 7 and config.train.seed == 3


def test_the_wide_preset_is_the_brains_batched_recipe_with_a_wider_generator():
    wide, light = load_config(CONFIGS / "brains-batched-wide.yaml"), load_config(CONFIGS / "brains-batched.yaml")
    assert wide.model.channels == (32, 64, 128, 256) and light.model.channels == (16, 32, 64, 128)
    assert wide.train.iterations == 1750 and light.train.iterations == 3750
    assert dataclasses.replace(wide, model=light.model, train=light.train) == light


def test_a_base_chain_that_comes_back_is_refused_in_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(InputError, match=re.escape("base chain comes back to this file")) as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [("base: 3\n", "base must be the path of another preset, got 3"),
                                           ("base: missing.yaml\n", "cannot read configuration"),
                                           ("model: 3\n", "section model must be a mapping of keys, got 3")])
def test_a_base_or_section_that_is_no_preset_is_named(tmp_path, text, message):
    (tmp_path / "variant.yaml").write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        load_config(tmp_path / "variant.yaml")


@pytest.mark.parametrize("key, value", [("paired_fraction", 1.5), ("synthetic_lesions", -0.1)])
def test_a_share_of_the_items_outside_0_1_is_refused(tmp_path, key, value):
    (tmp_path / "share.yaml").write_text(f"data: {{{key}: {value}}}\n")
    with pytest.raises(InputError, match=re.escape(f"data.{key} is a share of the items and must be in [0, 1], "
                                                   f"got {value}")):
        load_config(tmp_path / "share.yaml")
