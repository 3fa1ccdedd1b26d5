"""The Dagster code location. Load with ``dg check defs`` / ``dagster dev -m orchestration.definitions``."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from assets import audit, corpus, dataset, followups, landscape, laws, models, pilots, scores, validation
from orchestration.jobs import ALL_JOBS
from orchestration.profiles import Profile, load_profile
from orchestration.schedules import corpus_build_schedule
from orchestration.sensors import corpus_landing_sensor


def build_definitions(env: Mapping[str, str], profile: Profile | None = None) -> dg.Definitions:
    """The code location for the environment ``env``, validated first (a bad setting raises ``ConfigError``, one line
    naming it); ``profile``: one already loaded from ``env``. Secrets reach the resources only as ``dg.EnvVar``."""
    profile = profile or load_profile(env)
    return dg.Definitions(
        assets=dg.load_assets_from_modules(
            [corpus, models, scores, landscape, pilots, followups, laws, dataset, validation, audit]
        ),
        asset_checks=dg.load_asset_checks_from_modules(
            [corpus, models, scores, landscape, pilots, followups, laws, dataset, validation, audit]
        ),
        jobs=ALL_JOBS,
        schedules=[corpus_build_schedule(profile.corpus_build_cron, profile.corpus_build_on)],
        sensors=[corpus_landing_sensor],
        resources=profile.resources(),
        metadata={"profile": profile.name, "cptdata_home": str(profile.home)},
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(os.environ)
