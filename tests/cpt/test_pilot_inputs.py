"""The rules of a pilot's inputs: pins, pools, draws, held-out sources, the spread of chunk losses, the curve's rows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from cpt.landscape.regimes import regime_tokens_prefix, subset_stats
from cpt.scoring.windows import WindowPolicy
from cpt.training.pilot_inputs import (
    EvalSourcesError,
    LandscapePinError,
    MixtureSettings,
    PilotInputError,
    PilotRunInfo,
    PilotSettings,
    PinnedScores,
    RegimeRunSettings,
    check_landscape_pins,
    chunks_by_source,
    curve_rows,
    draw_chunks,
    draw_held_out,
    eval_spread,
    mixture_draws,
    pinned_scores,
    resolve_eval_sources,
    select_pool,
    size_budget,
)
from cpt.training.schema import PILOT_POINTS_SCHEMA
from cpt.training.trainer import EvalPoint, TrainResult

# source, role, split, chunks
LAYOUT = [
    ("dom", "domain", "train", 30),
    ("dom", "domain", "eval", 4),
    ("tables", "domain", "train", 10),
    ("tables", "domain", "eval", 3),
    ("dom_eval", "domain", "eval", 8),
    ("gen", "general", "train", 20),
    ("gen", "general", "eval", 5),
    ("gen_more", "general", "eval", 2),
    ("gen_more", "general", "train", 6),
]


def make_scores(layout=LAYOUT) -> PinnedScores:
    cols = {k: [] for k in ("chunk_id", "doc_id", "source", "role", "split", "n_tokens", "ppl")}
    for source, role, split, n in layout:
        for i in range(n):
            cols["chunk_id"].append(f"{source}-{split}-{i}")
            cols["doc_id"].append(f"doc-{source}-{split}-{i // 2}")
            cols["source"].append(source)
            cols["role"].append(role)
            cols["split"].append(split)
            cols["n_tokens"].append(20 + (7 * i) % 13)
            cols["ppl"].append(10.0 + i)
    return PinnedScores.from_columns(cols)


SCORES = make_scores()


# --- eval sources --------------------------------------------------------------------------------------------------


def test_chunks_by_source_counts_train_and_eval_chunks_of_the_role():
    assert chunks_by_source(SCORES, "domain") == {"dom": (30, 4), "dom_eval": (0, 8), "tables": (10, 3)}
    assert chunks_by_source(SCORES, "general") == {"gen": (20, 5), "gen_more": (6, 2)}


def test_configured_sources_are_taken_exactly_even_when_an_eval_only_source_exists():
    chosen = resolve_eval_sources("domain", chunks_by_source(SCORES, "domain"), ["tables", "dom", "dom"])
    assert chosen.sources == ("dom", "tables") and chosen.basis == "configured" and chosen.warnings == ()


@pytest.mark.parametrize("name", ["nope", "gen"])  # unknown, and a source of the other role
def test_a_configured_source_without_eval_chunks_of_the_role_is_refused_in_one_line(name):
    with pytest.raises(EvalSourcesError) as err:
        resolve_eval_sources("domain", chunks_by_source(SCORES, "domain"), ["dom", name])
    message = str(err.value)
    assert "\n" not in message and "domain_eval_sources" in message and repr(name) in message
    assert message.endswith("sources with domain eval chunks: dom, dom_eval, tables")


def test_a_configured_source_with_only_train_chunks_is_refused():
    layout = [("a", "domain", "train", 3), ("b", "domain", "eval", 2)]
    with pytest.raises(EvalSourcesError, match=r"'a', which has no domain eval chunks.*: b$"):
        resolve_eval_sources("domain", chunks_by_source(make_scores(layout), "domain"), ["a"])


def test_automatic_sources_are_the_eval_only_ones_when_there_are_any():
    chosen = resolve_eval_sources("domain", chunks_by_source(SCORES, "domain"), [])
    assert chosen.sources == ("dom_eval",) and chosen.basis == "eval-only sources" and chosen.warnings == ()


def test_without_an_eval_only_source_every_eval_split_is_used_and_the_mix_is_warned_about():
    chosen = resolve_eval_sources("general", chunks_by_source(SCORES, "general"), [])
    assert chosen.sources == ("gen", "gen_more") and chosen.basis == "every source's eval split"
    (warning,) = chosen.warnings
    assert "mixes the held-out splits of sources gen, gen_more" in warning and "general_eval_sources" in warning


def test_one_source_with_an_eval_split_needs_no_warning():
    chosen = resolve_eval_sources("general", {"gen": (20, 5), "other": (4, 0)}, [])
    assert chosen.sources == ("gen",) and chosen.basis == "every source's eval split" and chosen.warnings == ()


def test_no_eval_chunks_at_all_is_an_error():
    with pytest.raises(EvalSourcesError, match="no domain eval chunks are scored"):
        resolve_eval_sources("domain", {"dom": (30, 0)}, [])
    with pytest.raises(EvalSourcesError, match="no general eval chunks"):
        resolve_eval_sources("general", {}, ["gen"])


# --- pools and draws -----------------------------------------------------------------------------------------------


def test_pools_filter_by_role_split_and_source_in_score_order():
    assert select_pool(SCORES, "domain", "eval") == tuple(
        [f"dom-eval-{i}" for i in range(4)]
        + [f"tables-eval-{i}" for i in range(3)]
        + [f"dom_eval-eval-{i}" for i in range(8)]
    )
    assert select_pool(SCORES, "domain", "eval", ["tables"]) == tuple(f"tables-eval-{i}" for i in range(3))
    assert select_pool(SCORES, "general", "train", ["gen_more"]) == tuple(f"gen_more-train-{i}" for i in range(6))
    assert select_pool(SCORES, "domain", "eval", []) == ()


def test_a_training_draw_is_the_seeded_prefix_and_refuses_unknown_chunks():
    pool = select_pool(SCORES, "domain", "train")
    draw = draw_chunks(SCORES, pool, 200, seed=3)
    n_tok = dict(zip(SCORES.chunk_id, SCORES.n_tokens, strict=True))
    ppl = dict(zip(SCORES.chunk_id, SCORES.ppl, strict=True))
    expected = regime_tokens_prefix(pool, n_tok, ppl, 200, 3)
    assert draw.chunk_ids == expected.chunk_ids and draw.stats == expected.stats
    assert 200 <= draw.stats.tokens < 200 + 33
    with pytest.raises(PilotInputError, match=r"2 chunks are not in the pinned scores \(e.g. \['x', 'y'\]\)"):
        draw_chunks(SCORES, [*pool, "x", "y"], 200, seed=3)
    with pytest.raises(PilotInputError, match="cannot draw 100,000 tokens"):
        draw_chunks(SCORES, pool, 100_000, seed=3)


def test_mixture_draws_split_t_max_by_the_ratio():
    quarter = mixture_draws(SCORES, 0.25, 400, seed=0)
    assert set(quarter.domain.chunk_ids) <= set(select_pool(SCORES, "domain", "train"))
    assert set(quarter.general.chunk_ids) <= set(select_pool(SCORES, "general", "train"))
    assert quarter.domain.budget == 100 and quarter.general.budget == 300
    assert mixture_draws(SCORES, 0.0, 400, seed=0).domain is None
    assert mixture_draws(SCORES, 1.0, 400, seed=0).general is None


def test_the_held_out_draw_takes_eval_tokens_from_the_resolved_sources_only_with_seed_plus_one():
    held = draw_held_out(SCORES, "domain", [], eval_tokens=60, seed=4)
    assert held.sources.sources == ("dom_eval",)
    assert held.chunk_ids and all(c.startswith("dom_eval-eval-") for c in held.chunk_ids)
    pool = select_pool(SCORES, "domain", "eval", ["dom_eval"])
    n_tok = dict(zip(SCORES.chunk_id, SCORES.n_tokens, strict=True))
    ppl = dict(zip(SCORES.chunk_id, SCORES.ppl, strict=True))
    assert held.chunk_ids == regime_tokens_prefix(pool, n_tok, ppl, 60, 5).chunk_ids
    assert held.chunk_ids != regime_tokens_prefix(pool, n_tok, ppl, 60, 4).chunk_ids
    assert held.n_tokens == tuple(n_tok[c] for c in held.chunk_ids)

    everything = draw_held_out(SCORES, "domain", ["tables"], eval_tokens=10_000, seed=4)  # more than there is
    assert sorted(everything.chunk_ids) == sorted(select_pool(SCORES, "domain", "eval", ["tables"]))
    assert everything.sources.basis == "configured"
    with pytest.raises(EvalSourcesError, match="'nope'"):
        draw_held_out(SCORES, "domain", ["nope"], eval_tokens=60, seed=4)


# --- pins ----------------------------------------------------------------------------------------------------------

POLICY = WindowPolicy(length=64, min_tokens=8)


def test_landscape_pins_must_match_the_model_and_the_window_policy():
    pin = {"scores_version": 3, "model_revision": "rev-a", "policy_hash": POLICY.policy_hash}
    pins = check_landscape_pins([pin], 7, "rev-a", POLICY)
    assert (pins.scores_version, pins.model_revision, pins.policy_hash) == (3, "rev-a", POLICY.policy_hash)
    with pytest.raises(LandscapePinError, match="base model is rev-b"):
        check_landscape_pins([pin], 7, "rev-b", POLICY)
    with pytest.raises(LandscapePinError, match="rebuild the landscape for this model, or set the pilot's window"):
        check_landscape_pins([pin], 7, "rev-a", WindowPolicy(length=256))
    with pytest.raises(LandscapePinError, match="landscape/regimes v7 is empty"):
        check_landscape_pins([], 7, "rev-a", POLICY)
    assert issubclass(LandscapePinError, ValueError)


def test_pinned_scores_must_hold_chunks_with_unique_ids():
    empty = {k: [] for k in ("chunk_id", "doc_id", "source", "role", "split", "n_tokens", "ppl")}
    with pytest.raises(PilotInputError, match="v4 holds no chunks scored by model rev-a"):
        pinned_scores(empty, scores_version=4, model_revision="rev-a", policy=POLICY)
    one = {"chunk_id": ["c"], "doc_id": ["d"], "source": ["s"], "role": ["domain"], "split": ["eval"]}
    one |= {"n_tokens": [5], "ppl": [2.0], "ignored": [1]}
    assert len(pinned_scores(one, scores_version=4, model_revision="rev-a", policy=POLICY)) == 1
    with pytest.raises(ValueError, match="1 chunk ids appear twice"):
        PinnedScores.from_columns({k: v * 2 for k, v in one.items()})


def test_size_budget_names_a_missing_size():
    assert size_budget({"small": 10, "large": 20}, "large") == 20
    with pytest.raises(PilotInputError, match="size 'huge' has no token count"):
        size_budget({"small": 10}, "huge")


# --- settings ------------------------------------------------------------------------------------------------------


def test_the_mixture_defaults_leave_the_held_out_check_the_points_its_refit_needs():
    from cpt.laws.reports import CmrSettings

    mixture, holdout = MixtureSettings(), CmrSettings().holdout_fraction
    # Evaluations fall due every T_max / evals tokens and happen up to one window past the mark (whole chunks).
    due = [k * mixture.t_max_tokens / mixture.evals + mixture.window_length for k in range(1, mixture.evals + 1)]
    early = [t for t in due if t <= (1 - holdout) * due[-1]]
    assert len(early) >= 6  # the general-loss trajectory has 3 terms and needs 6 points (cpt.laws.cmr.fits)


def test_pilot_settings_build_the_train_config_and_the_window_policy():
    settings = PilotSettings(evals=4, learning_rate=5e-4)
    config = settings.train_config(1000, 0.25)
    assert (config.eval_every_tokens, config.mix_ratio, config.learning_rate) == (250, 0.25, 5e-4)
    assert PilotSettings().learning_rate == 3e-4
    assert PilotSettings(window_length=64, min_tokens=8).policy() == POLICY
    assert PilotSettings(domain_eval_sources=("a",)).eval_sources("domain") == ("a",)
    assert RegimeRunSettings().size_tokens["small"] < RegimeRunSettings().size_tokens["large"]
    with pytest.raises(PilotInputError, match="evals and eval_tokens must be at least 1"):
        PilotSettings(evals=0)


# --- spread of chunk losses ----------------------------------------------------------------------------------------


def test_eval_spread_reports_quantiles_and_the_token_share_of_outlier_chunks():
    losses = [4.0, 4.1, 4.2, 4.3, 4.4, 4.5, 4.6, 4.7, 4.8, 9.0]  # one chunk of box drawing
    tokens = [10] * 9 + [90]
    spread = eval_spread(losses, tokens)
    x = np.array(losses)
    median = 4.45
    robust_sd = 1.4826 * float(np.median(np.abs(x - median)))
    assert spread.chunks == 10 and spread.median == pytest.approx(median)
    assert (spread.min, spread.max) == (4.0, 9.0)
    assert spread.p10 == pytest.approx(np.percentile(x, 10)) and spread.p90 == pytest.approx(np.percentile(x, 90))
    assert spread.std == pytest.approx(x.std()) and spread.robust_sd == pytest.approx(robust_sd)
    assert spread.outlier_chunks == 1 and spread.outlier_token_share == pytest.approx(0.5)

    tight = eval_spread([4.0, 4.1, 4.2], [1, 1, 1])
    assert tight.outlier_chunks == 0 and tight.outlier_token_share == 0.0


def test_eval_spread_edge_cases():
    flat = eval_spread([2.0, 2.0, 2.0, 2.5], [1, 1, 1, 3])  # MAD 0: anything off the median is an outlier
    assert flat.robust_sd == 0.0 and flat.outlier_chunks == 1 and flat.outlier_token_share == pytest.approx(0.5)
    empty = eval_spread([], [])
    assert empty.chunks == 0 and math.isnan(empty.median) and math.isnan(empty.outlier_token_share)
    with pytest.raises(ValueError, match="2 chunk losses but 1 token counts"):
        eval_spread([1.0, 2.0], [3])


# --- rows ----------------------------------------------------------------------------------------------------------


def point(step, tokens, dom, gen):
    return EvalPoint(
        step=step,
        tokens=tokens,
        domain_tokens=tokens,
        general_tokens=0,
        domain_loss=float(np.mean(dom)),
        general_loss=float(np.mean(gen)),
        train_loss=float("nan") if step == 0 else 3.0,
        learning_rate=1e-3,
        domain_chunk_losses=tuple(dom),
        general_chunk_losses=tuple(gen),
    )


def result_of(*points):
    return TrainResult(points, points[-1].step, points[-1].tokens, points[-1].tokens, 0, 1.0, 0.0, 1.0, 1.0, 10, "cpu")


INFO = PilotRunInfo(
    partition="1/4",
    regime="mixture",
    mix_ratio=0.25,
    size_tokens=400,
    train_chunks=5,
    stats=None,
    model_revision="rev-a",
    mlflow_run_id="ml-1",
    dagster_run_id="dg-1",
    config_hash="cfg",
    scores_version=3,
    eval_set="ev",
)


def test_curve_rows_fill_every_column_with_the_per_chunk_losses_of_each_point():
    domain = draw_held_out(SCORES, "domain", [], eval_tokens=60, seed=0)
    general = draw_held_out(SCORES, "general", ["gen"], eval_tokens=50, seed=0)
    nd, ng = len(domain.chunk_ids), len(general.chunk_ids)
    result = result_of(point(0, 0, [5.0] * nd, [4.0] * ng), point(2, 400, [4.0 + i for i in range(nd)], [3.0] * ng))

    rows = curve_rows(result, INFO, domain, general)

    assert [r["is_final"] for r in rows] == [False, True] and [r["step"] for r in rows] == [0, 2]
    assert (
        rows[1]["domain_chunk_losses"] == [4.0 + i for i in range(nd)] and rows[0]["general_chunk_losses"] == [4.0] * ng
    )
    assert all(r["domain_chunk_tokens"] == list(domain.n_tokens) for r in rows)
    assert all(r["general_chunk_tokens"] == list(general.n_tokens) for r in rows)
    assert rows[0]["domain_eval_sources"] == ["dom_eval"] and rows[0]["general_eval_sources"] == ["gen"]
    assert rows[0]["mu"] is None and rows[0]["partition"] == "1/4" and rows[1]["tokens"] == 400
    table = pa.Table.from_pylist(rows, schema=PILOT_POINTS_SCHEMA)
    assert all(
        table[name].null_count == 0
        for name in PILOT_POINTS_SCHEMA.names
        if name not in ("mu", "sigma", "log_mu", "log_sigma")
    )

    stats = subset_stats([10.0, 20.0], [5, 5])
    with_stats = curve_rows(result, PilotRunInfo(**{**INFO.__dict__, "stats": stats}), domain, general)
    assert with_stats[0]["mu"] == 15.0 and with_stats[0]["log_sigma"] == pytest.approx(stats.log_sigma)


def test_curve_rows_refuse_a_point_whose_chunk_losses_do_not_match_the_held_out_set():
    domain = draw_held_out(SCORES, "domain", [], eval_tokens=60, seed=0)
    general = draw_held_out(SCORES, "general", ["gen"], eval_tokens=50, seed=0)
    short = result_of(point(0, 0, [5.0] * (len(domain.chunk_ids) - 1), [4.0] * len(general.chunk_ids)))
    with pytest.raises(ValueError, match=r"T=0 has \d+ domain chunk losses for \d+ held-out chunks"):
        curve_rows(short, INFO, domain, general)
