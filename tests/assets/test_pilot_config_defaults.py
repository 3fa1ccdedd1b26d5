"""The pilot run configs take every default from the cpt settings, their one home."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

import pytest

from assets.landscape import LARGEST_PILOT_TOKENS
from assets.pilots import MixtureConfig, PilotConfig, RegimeRunConfig
from cpt.training.pilot_inputs import MixtureSettings, PilotSettings, RegimeRunSettings


def plain(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


@pytest.mark.parametrize(
    ("config", "settings"),
    [(PilotConfig, PilotSettings), (RegimeRunConfig, RegimeRunSettings), (MixtureConfig, MixtureSettings)],
)
def test_every_config_field_with_a_settings_counterpart_has_its_default(config, settings):
    defaults = settings()
    names = {f.name for f in fields(settings) if f.init}
    assert names <= set(config.model_fields)  # every setting can be set from the run config
    for name in names:
        assert plain(config.model_fields[name].default) == plain(getattr(defaults, name)), name


def test_the_run_config_becomes_the_settings_it_defaults_from():
    assert MixtureConfig().settings() == PilotSettings(evals=MixtureSettings().evals)
    assert PilotConfig(domain_eval_sources=["a", "b"]).settings().domain_eval_sources == ("a", "b")
    assert PilotSettings().learning_rate == 3e-4  # the pilots' rate, not TrainConfig's generic 1e-3


def test_the_largest_regime_run_fits_every_regime():
    assert max(RegimeRunSettings().size_tokens.values()) == LARGEST_PILOT_TOKENS
