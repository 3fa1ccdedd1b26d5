"""Corpus → base model → scores → landscape → pilot runs through Dagster, on a slice of the sample corpora.

Real ingestion, a self-pretrained tiny base model, real Spark scoring and landscape, real training, real MLflow.
"""

import gzip
import json
from itertools import islice

import dagster as dg
import mlflow
import numpy as np
import pyarrow.compute as pc
import pytest

from assets.landscape import REGIMES_TABLE
from assets.pilots import DOMAIN_SELECTION, MIXTURE_RUNS_TABLE, REGIME_RUNS_TABLE
from cpt.delta_store import DeltaStore
from cpt.landscape.regimes import regime_tokens_prefix
from cpt.lineage.openlineage import OpenLineageEmitter
from orchestration.cli import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from orchestration.definitions import build_definitions
from spark_jobs.dataset import SELECTION_TABLE
from spark_jobs.scoring import SCORES_TABLE
from tests.assets.fits_rows import write_ppl_fit

pytestmark = pytest.mark.spark

WINDOW = {"window_length": 64, "min_tokens": 8}
# float32 products: the same scores, selections and losses on every CPU (``auto`` is bfloat16 on AMX and AVX512-BF16
# CPUs only, whose rounding moves a chunk across this small fixture's budget and tolerance lines)
EXACT = {"precision": "float32"}
PILOT = WINDOW | EXACT | {"eval_tokens": 400, "learning_rate": 3e-3, "micro_batch_size": 4, "evals": 2}
RUN_CONFIG = {
    "ops": {
        "scores__chunk_perplexity": {"config": WINDOW | EXACT},
        "landscape__regimes": {"config": {"min_tokens": 900}},
        "pilots__regime_runs": {"config": PILOT | {"size_tokens": {"small": 300, "large": 900}}},
        "pilots__mixture_runs": {"config": PILOT | {"t_max_tokens": 800, "evals": 4}},
        "dataset__domain_selection": {"config": {"budget_tokens": 1600}},
    }
}


def slice_of(corpora, name, out, n, **fields):
    with gzip.open(corpora / name, "rt") as src:
        records = [json.loads(line) | fields for line in islice(src, n)]
    for r in records:
        r["text"] = r["text"][:1500]
    out.write_text("\n".join(json.dumps(r) for r in records))
    return str(out)


def run(defs, job, instance, **kwargs):
    job_def = defs.resolve_job_def(job)
    ops = {k: v for k, v in RUN_CONFIG["ops"].items() if job_def.graph.has_node_named(k)}
    result = job_def.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": ops}, **kwargs)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


@pytest.fixture(scope="module")
def graph(tmp_path_factory, corpora_dir):
    tmp = tmp_path_factory.mktemp("pilots")
    # "dom" keeps a held-out split of its own, so the automatic eval set must pick the eval-only "dom_eval" over it.
    sources = [
        ("dom", "med_medquad.jsonl.gz", "domain", "by_group", 120),
        ("dom_eval", "med_abstracts_tc_test.jsonl.gz", "domain", "eval", 12),
        ("gen", "gen_austen.jsonl.gz", "general", "train", 60),
        ("gen_eval", "gen_sotu.jsonl.gz", "general", "eval", 6),
    ]
    entries = [
        {"name": n, "path": slice_of(corpora_dir, f, tmp / f"{n}.jsonl", k), "format": "jsonl", "role": r, "split": s}
        | ({"eval_fraction": 0.15} if s == "by_group" else {})
        for n, f, r, s, k in sources
    ]
    (tmp / "sources.json").write_text(json.dumps(entries))
    env = {
        "CPTDATA_HOME": str(tmp / "home"),
        "CPTDATA_SOURCES": str(tmp / "sources.json"),
        "CPTDATA_PRETRAIN_TOKENS": "8192",
    }
    defs = build_definitions(env)
    with dg.instance_for_test() as instance:
        names = [e["name"] for e in entries]
        instance.add_dynamic_partitions("corpus_sources", names)
        for name in names:
            run(defs, "ingest_corpus", instance, partition_key=name)
        run(defs, "base_model", instance)
        tags = {ASSET_PARTITION_RANGE_START_TAG: names[0], ASSET_PARTITION_RANGE_END_TAG: names[-1]}
        run(defs, "score_corpus", instance, tags=tags)
        run(defs, "landscape", instance)
        events = str(tmp / "home" / "openlineage" / "events.jsonl")  # the profile's default: the tests' writes too
        store = DeltaStore(str(tmp / "home" / "delta"), on_commit=OpenLineageEmitter("cptdata", events))
        select_toward_the_pool_median(defs, instance, store)
        yield defs, instance, store, env


def select_toward_the_pool_median(defs, instance, store) -> None:
    """A PPL-law fit row whose target is the domain pool's median PPL with half its spread, and the DOS selection
    toward it: what the mixture pilots draw their domain tokens from."""
    scores = store.read(SCORES_TABLE, filters=[("role", "=", "domain"), ("split", "=", "train")])
    ppl = scores["ppl"].to_numpy()
    write_ppl_fit(store, float(np.median(ppl)), float(ppl.std() / 2), store.version(REGIMES_TABLE))
    run(defs, "select_domain_data", instance, asset_selection=[DOMAIN_SELECTION])


def final_meta(result):
    mat = result.get_asset_materialization_events()[0].event_specific_data.materialization
    return {k: v.value for k, v in mat.metadata.items()}


def held_out_draw(store, role, source, eval_tokens=PILOT["eval_tokens"], seed=0):
    """The held-out chunks a pilot must evaluate on: the seeded (seed + 1) draw from one source's eval chunks."""
    scores = store.read(SCORES_TABLE)
    n_tok = dict(zip(scores["chunk_id"].to_pylist(), scores["n_tokens"].to_pylist(), strict=True))
    ppl = dict(zip(scores["chunk_id"].to_pylist(), scores["ppl"].to_pylist(), strict=True))
    pool = [
        r["chunk_id"]
        for r in scores.select(["chunk_id", "role", "split", "source"]).to_pylist()
        if (r["role"], r["split"], r["source"]) == (role, "eval", source)
    ]
    budget = min(eval_tokens, sum(n_tok[c] for c in pool))
    return [n_tok[c] for c in regime_tokens_prefix(pool, n_tok, ppl, budget, seed + 1).chunk_ids]


def test_a_regime_run_trains_on_its_draw_and_reruns_replace_its_curve(graph):
    defs, instance, store, env = graph
    key = dg.MultiPartitionKey({"regime": "window-c0.50-w0.20", "size": "large"})
    first = run(defs, "regime_pilots", instance, partition_key=key)
    rows = store.read(REGIME_RUNS_TABLE)
    assert rows.num_rows == 3  # T = 0, one mid-run evaluation, the end
    assert set(rows["partition"].to_pylist()) == {str(key)}
    assert rows["tokens"].to_pylist()[0] == 0 and rows["tokens"].to_pylist()[-1] >= 900
    assert rows["is_final"].to_pylist() == [False, False, True]

    regime = store.read(REGIMES_TABLE, filters=[("name", "=", "window-c0.50-w0.20")])
    scores = store.read(SCORES_TABLE)
    ids = regime["chunk_ids"][0].as_py()
    n_tok = dict(zip(scores["chunk_id"].to_pylist(), scores["n_tokens"].to_pylist(), strict=True))
    ppl = dict(zip(scores["chunk_id"].to_pylist(), scores["ppl"].to_pylist(), strict=True))
    draw = regime_tokens_prefix(ids, n_tok, ppl, 900, seed=0)
    assert rows["mu"][0].as_py() == pytest.approx(draw.stats.mu) and rows["train_chunks"][0].as_py() == draw.stats.count
    meta = final_meta(first)
    assert meta["domain_loss_final"] < meta["domain_loss_T0"]  # training on the domain lowers the domain loss

    # The held-out sets: the eval-only sources (not "dom"'s own eval split), one loss per chunk at every point.
    scores_sources = set(scores.filter(pc.equal(scores["split"], "eval"))["source"].to_pylist())
    assert {"dom", "dom_eval"} <= scores_sources  # "dom" has eval chunks the automatic choice must leave out
    assert rows["domain_eval_sources"].to_pylist() == [["dom_eval"]] * 3
    assert rows["general_eval_sources"].to_pylist() == [["gen_eval"]] * 3
    expected = {
        "domain": held_out_draw(store, "domain", "dom_eval"),
        "general": held_out_draw(store, "general", "gen_eval"),
    }
    for row in rows.to_pylist():
        for role in ("domain", "general"):
            losses, tokens = row[f"{role}_chunk_losses"], row[f"{role}_chunk_tokens"]
            assert tokens == expected[role] and len(losses) == len(tokens) > 1
            weighted = sum(x * n for x, n in zip(losses, tokens, strict=True)) / sum(tokens)
            assert weighted == pytest.approx(row[f"{role}_loss"], rel=0, abs=1e-9)
    assert rows["domain_chunk_losses"][0].as_py() != rows["domain_chunk_losses"][2].as_py()  # re-evaluated
    assert (meta["domain_eval_basis"], meta["domain_eval_sources"]) == ("eval-only sources", ["dom_eval"])
    assert meta["general_eval_sources"] == ["gen_eval"] and meta["eval_warnings"] == []
    spread = meta["domain_chunk_loss_spread"]
    first_losses = rows["domain_chunk_losses"][0].as_py()
    assert spread["T0"]["chunks"] == len(first_losses) and spread["T0"]["max"] == max(first_losses)
    assert spread["final"]["median"] == pytest.approx(float(np.median(rows["domain_chunk_losses"][2].as_py())))

    client = mlflow.MlflowClient(f"sqlite:///{env['CPTDATA_HOME']}/mlflow.db")
    run_id = rows["mlflow_run_id"][0].as_py()
    tracked = client.get_run(run_id)
    assert tracked.data.tags["dagster.partition"] == str(key) and tracked.data.tags["dagster.run_id"] == first.run_id
    assert tracked.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "domain_loss")
    assert [m.step for m in history] == rows["tokens"].to_pylist()

    version = store.version(REGIME_RUNS_TABLE)
    run(defs, "regime_pilots", instance, partition_key=key)  # a retry of the partition replaces its curve
    again = store.read(REGIME_RUNS_TABLE)
    assert store.version(REGIME_RUNS_TABLE) == version + 1 and again.num_rows == rows.num_rows
    assert again["domain_loss"].to_pylist() == pytest.approx(rows["domain_loss"].to_pylist(), abs=1e-6)  # seeded


def test_mixture_runs_hold_their_ratio_and_share_the_t0_point(graph):
    defs, instance, store, _ = graph
    for ratio in ("0", "1/3"):
        run(defs, "mixture_pilots", instance, partition_key=ratio)
    rows = store.read(MIXTURE_RUNS_TABLE)
    assert sorted(set(rows["partition"].to_pylist())) == ["0", "1/3"]
    final = rows.filter(rows["is_final"])
    by_ratio = {r["partition"]: r for r in final.to_pylist()}
    assert by_ratio["0"]["domain_tokens"] == 0
    # the domain tokens are the DOS selection's first steps: the chunks the dataset will hold at this budget
    selection = store.read(SELECTION_TABLE).sort_by("step")
    assert set(rows["regime"].to_pylist()) == {f"dos-selection@v{store.version(SELECTION_TABLE)}"}
    needed = round(800 / 3)
    steps = int(np.searchsorted(selection["cumulative_tokens"].to_numpy(), needed)) + 1
    assert by_ratio["1/3"]["train_chunks"] == steps
    assert by_ratio["1/3"]["mu"] == pytest.approx(selection["ppl"].to_numpy()[:steps].mean())
    share = by_ratio["1/3"]["domain_tokens"] / by_ratio["1/3"]["tokens"]
    assert share == pytest.approx(1 / 3, abs=0.1)  # within a chunk or two of the ratio at this tiny budget
    start = rows.filter(pc.equal(rows["tokens"], 0))
    assert start.num_rows == 2 and len(set(start["domain_loss"].to_pylist())) == 1  # same base model, same eval set
    assert set(rows["general_loss"].to_pylist()) and all(x == x for x in rows["general_loss"].to_pylist())


def test_the_eval_sources_a_user_configures_are_used_and_an_unknown_one_fails_clearly(graph):
    defs, instance, store, _ = graph
    job = defs.resolve_job_def("mixture_pilots")
    mixture = RUN_CONFIG["ops"]["pilots__mixture_runs"]["config"]

    def execute(domain_eval_sources):
        config = {"pilots__mixture_runs": {"config": mixture | {"domain_eval_sources": domain_eval_sources}}}
        return job.execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": config}, partition_key="1/2"
        )

    failed = execute(["nope"])
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message == (
        "domain_eval_sources names 'nope', which has no domain eval chunks in the pinned scores; sources with domain "
        "eval chunks: dom, dom_eval"
    )
    if store.exists(MIXTURE_RUNS_TABLE):  # written by the test before, when run with it
        assert "1/2" not in set(store.read(MIXTURE_RUNS_TABLE)["partition"].to_pylist())  # nothing was written

    assert execute(["dom"]).success
    rows = store.read(MIXTURE_RUNS_TABLE, filters=[("partition", "=", "1/2")])
    assert rows.num_rows >= 3 and rows["domain_eval_sources"].to_pylist() == [["dom"]] * rows.num_rows
    assert rows["domain_chunk_tokens"].to_pylist() == [held_out_draw(store, "domain", "dom")] * rows.num_rows
    assert rows["general_eval_sources"].to_pylist() == [["gen_eval"]] * rows.num_rows


def test_the_per_process_caches_tell_a_table_created_again_at_its_path_from_the_old_one(store, commit):
    """The pilots cache what they read by table version; a table deleted and written again restarts at version 0,
    which must not be taken for the cached one."""
    import shutil

    import pyarrow as pa

    from assets.pilots import _table_identity

    store.overwrite("scores/x", pa.table({"a": [1]}), commit, predicate=None)
    first = _table_identity(store, "scores/x", 0)
    assert _table_identity(store, "scores/x", 0) == first  # the same version: the same identity
    shutil.rmtree(store.table_uri("scores/x"))
    store.overwrite("scores/x", pa.table({"a": [2]}), commit, predicate=None)
    again = _table_identity(store, "scores/x", 0)
    assert again[2] == first[2] == 0 and again != first
