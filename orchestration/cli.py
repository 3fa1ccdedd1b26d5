"""``cptdata``: run the graph from a terminal against a persistent Dagster instance (the one ``dagster dev`` shows).

cptdata demo                 register every source, then materialize the whole graph, partition by partition
cptdata register             register declared and landed sources as corpus_sources partitions
cptdata ingest SOURCE ...    (re)ingest some sources
cptdata score [SOURCE ...]   score some (default: all) sources in one run
cptdata landscape            histograms and regimes of the current scores
cptdata pilots [regime|mixture]  every pilot partition, one run each (default: both kinds)
cptdata laws                 fit both scaling laws on the pilot tables (MLflow runs, registered models)
cptdata followups            fit the PPL law; while its answer asks for them, rounds of follow-up pilots and refits
cptdata select               fit the PPL law, then select domain chunks toward its target landscape (DOS)
cptdata dataset              build the CPT dataset at the CMR answer (checked, exported with a manifest)
cptdata confirm              re-check the papers' claims on the current build (confirmation runs, several seeds)
cptdata export [VERSION]     (re)write the exports of a dataset version (default: the latest), checked first
cptdata audit [TABLE[@VERSION]] [--json] [--out DIR]
                             the lineage of a table version (default: the latest dataset): source files with
                             SHA-256, base model, upstream table versions, fits, Dagster runs, code — Markdown
cptdata audit --uses FILE_OR_TABLE@VERSION
                             every table version built from a source file (path or sha256:HEX) or table version

The main job (demo): ingest → base model → score → landscape → regime pilots → PPL law (⇄ follow-up pilots around
its optimum, while it asks for them) → DOS selection → mixture pilots (on the selection) → CMR → dataset (+ lineage
report) → confirmations (the papers' claims re-checked). It prints a header per stage, then the stage times and a
results block: corpus sizes, landscape medians, both answers with basis, interval and flags, the dataset, the
confirmation verdicts, failed gates, plots and how to open both UIs. `cptdata demo -h` lists its options.

Exit codes (for schedulers and scripts):
  0    every run succeeded and every blocking quality gate passed
  1    a run failed (its error is printed), or an unexpected error
  2    usage or configuration error: bad arguments, a bad CPTDATA_* setting or sources file, an unknown source;
       nothing ran
  3    a blocking quality gate failed and no run failed otherwise: nothing downstream was built from the checked
       result (a corpus/documents candidate is not even committed: the table stays at its last good version; a
       law whose gate fails is recorded but the champion alias does not move)
  130  interrupted (Ctrl-C, SIGTERM): the interrupted run is marked failed
A failed run takes precedence over a failed gate. Errors are one line on stderr; -v/--verbose adds the traceback, and
Dagster's own step events (DEBUG) to the stages' progress (INFO).

Every run started here records its process (tags cptdata/pid, cptdata/host): a run left STARTED by a process that
is gone (killed) is marked failed by the next cptdata command on that host.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from assets.partitions import corpus_sources
from orchestration.jobs import (
    base_model_job,
    build_dataset_job,
    confirm_claims_job,
    domain_selection_job,
    fit_cmr_job,
    fit_laws_job,
    fit_ppl_law_job,
    followup_pilots_job,
    ingest_corpus_job,
    landscape_job,
    mixture_pilots_job,
    plan_followups_job,
    regime_pilots_job,
    score_corpus_job,
    select_domain_data_job,
)
from orchestration.profiles import Profile, load_profile
from orchestration.settings import ConfigError, redact

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_GATE_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Run tags that tie a run to the CLI process executing it in-process (the daemon does not monitor those runs).
PID_TAG, HOST_TAG, PROCESS_START_TAG = "cptdata/pid", "cptdata/host", "cptdata/process_start"
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

# Dagster's run tags for a partition range (what a single-run backfill launches).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


# The quick-start instance: SQLite storage in $DAGSTER_HOME; runs that train (the cpt_training pool) queue one at a
# time, so a UI backfill of every pilot partition does not oversubscribe a laptop.
QUICKSTART_INSTANCE = """\
concurrency:
  pools:
    granularity: run
    default_limit: 1
  runs:
    max_concurrent_runs: 2
run_monitoring:
  enabled: true  # a run whose process died is marked failed, freeing its pool slot
telemetry:
  enabled: false
"""


class UsageError(Exception):
    """A bad command line (e.g. an unknown source): one line, exit code 2, nothing ran."""


def _instance(profile: Profile) -> dg.DagsterInstance:
    """The instance under $DAGSTER_HOME, defaulting to ``<CPTDATA_HOME>/dagster`` so the UI sees the same runs."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(profile.home / "dagster")
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or not config.read_text().strip():
        config.write_text(QUICKSTART_INSTANCE)
    return dg.DagsterInstance.get()


def _host() -> str:
    """This machine: its hostname and, where Linux tells it, its boot id and PID namespace — containers that share a
    hostname, or a reboot that reuses PIDs, are told apart."""
    parts = [socket.gethostname()]
    for probe in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with suppress(OSError):
            parts.append(os.readlink(probe) if probe.endswith("/pid") else Path(probe).read_text().strip())
    return "|".join(parts)


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when that cannot be known."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _process_tags() -> dict[str, str]:
    started = _process_start(os.getpid())
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: _host()}
    return tags | ({PROCESS_START_TAG: f"{started:.2f}"} if started is not None else {})


def _alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` still runs and is the one that started the run (not a later one given its pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def mark_dead_cli_runs(instance: dg.DagsterInstance, *, this_process: bool = False) -> list[dg.DagsterRun]:
    """Mark failed the runs a ``cptdata`` process on this host started in-process and can no longer finish.

    Those runs are not monitored by the daemon, so a killed CLI leaves them STARTED forever. By default: runs whose
    process is gone. With ``this_process``: the runs of this process still active (it was interrupted).
    """
    host, me = _host(), os.getpid()
    marked = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE_STATUSES, tags={HOST_TAG: host})):
        if run.parent_run_id is not None:  # a re-execution (from the UI, say) copies its parent's tags: not ours
            continue
        try:
            pid = int(run.tags[PID_TAG])
            started = float(run.tags[PROCESS_START_TAG]) if PROCESS_START_TAG in run.tags else None
        except (KeyError, ValueError):
            continue
        if this_process:
            if pid != me:
                continue
            message = f"cptdata process {pid} on {host} was interrupted during this run"
        else:
            if _alive(pid, started):
                continue
            message = (
                f"cptdata process {pid} on {host}, which executed this run in-process, is gone (killed?): "
                "the run cannot finish and is marked failed"
            )
        instance.report_run_failed(run, message=message)
        marked.append(run)
        _err(f"run {run.run_id} ({run.job_name}) was left {run.status.value}: {message}", level="warning")
    return marked


def _err(message: str, level: str = "error") -> None:
    print(f"cptdata: {level}: {redact(message, os.environ)}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What one invocation's runs came to; its exit code."""

    failed_runs: list[str] = field(default_factory=list)
    gates_failed: list[str] = field(default_factory=list)  # blocking quality checks that failed
    findings: list[str] = field(default_factory=list)  # non-blocking checks that failed (e.g. a law not promoted)

    def code(self) -> int:
        if self.failed_runs:
            return EXIT_RUN_FAILED
        return EXIT_GATE_FAILED if self.gates_failed else EXIT_OK


OUTCOME = Outcome()  # this invocation's (reset by main)
LOG_LEVEL = {"level": "INFO"}  # Dagster's console log level for the runs of this invocation: DEBUG with -v
OP_CONFIG: dict[str, dict] = {}  # asset op name → run config fields set on the command line (reset by main)


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    """Execute in this process, tagged with it; a run the process is interrupted in is marked failed. Dagster's own
    step events are DEBUG: shown with -v only; the stages' progress (INFO) always."""
    tags = {**kwargs.pop("tags", {}), **_process_tags()}
    run_config: dict = {"loggers": {"console": {"config": {"log_level": LOG_LEVEL["level"]}}}}
    ops = {node.name for node in job.graph.nodes}
    chosen = {name: {"config": config} for name, config in OP_CONFIG.items() if name in ops}
    if chosen:
        run_config["ops"] = chosen
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False, run_config=run_config, **kwargs)
    run = instance.get_run_by_id(result.run_id)
    if run is not None and run.tags.get("dagster/failure_reason") == "UNEXPECTED_TERMINATION":
        raise KeyboardInterrupt(f"run {result.run_id} was interrupted")  # Dagster marked it failed
    return result


def register(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    names = sorted(defs.resources["catalog"].specs())
    missing = [n for n in names if not instance.has_dynamic_partition(corpus_sources.name, n)]
    if missing:
        instance.add_dynamic_partitions(corpus_sources.name, missing)
    return names


def _report(result) -> bool:
    """Print what a run did; record a failed run or gate in OUTCOME. False when the run failed (stop the chain)."""
    shown = set()
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key in shown:  # a single run over a partition range reports once per partition
            continue
        shown.add(mat.asset_key)
        keys = (
            "dagster/row_count",
            "delta_version",
            "duplicates_dropped",
            "rejects",
            "revision",
            "n_params",
            "final_train_loss",
            "chunks_scored_now",
            "tokens_per_second",
            "median_ppl",
            "edges_version",
            "regimes",
            "mu",
            "sigma",
            "domain_loss_T0",
            "domain_loss_final",
            "general_loss_final",
            "seconds",
            "registered_model",
            "promoted",
            "basis",
            "target_mu",
            "target_sigma",
            "tokens",
            "achieved_ratio",
            "export_folder",
            "rounds_done",
            "needed",
            "round",
        )
        meta = {k: v.value for k, v in mat.metadata.items() if k in keys}
        print(f"[cptdata]   {mat.asset_key.to_user_string()}: {meta}", flush=True)
        if "answer" in mat.metadata:  # a law's answer: what a user acts on, with its basis
            print(f"[cptdata]   ANSWER {mat.asset_key.to_user_string()}: {mat.metadata['answer'].value}", flush=True)
        if "summary" in mat.metadata:  # a selection's or dataset's result in one line
            print(f"[cptdata]   RESULT {mat.asset_key.to_user_string()}: {mat.metadata['summary'].value}", flush=True)
    failed_checks = [c for c in result.get_asset_check_evaluations() if not c.passed]
    for check in failed_checks:
        meta = {k: v.value for k, v in check.metadata.items()}
        print(f"[cptdata]   check FAILED: {check.asset_key.to_user_string()}:{check.check_name} {meta}", flush=True)
    if result.success:
        OUTCOME.findings.extend(f"{c.asset_key.to_user_string()}:{c.check_name}" for c in failed_checks)
        return True
    failures = [e for e in result.all_events if e.is_step_failure]
    errors = [e.event_specific_data.error for e in failures]
    if failed_checks and all(err.cls_name == "DagsterAssetCheckFailedError" for err in errors):
        # The stage ran and recorded its result; its quality gate says the result is not good enough, which blocks
        # what depends on it. The chain goes on (other partitions, last good versions); the exit code says so.
        OUTCOME.gates_failed.extend(f"{c.asset_key.to_user_string()}:{c.check_name}" for c in failed_checks)
        print(f"[cptdata]   run {result.run_id}: a blocking quality gate failed; downstream stays blocked", flush=True)
        return True
    OUTCOME.failed_runs.append(result.run_id)
    reasons = "; ".join(
        f"{e.step_key}: {(err.message or err.cls_name).strip().splitlines()[0]}"
        for e, err in zip(failures, errors, strict=True)
    )
    reasons = redact(reasons, os.environ)  # an error message may quote a URI with its password
    print(f"[cptdata]   run {result.run_id} FAILED{': ' + reasons if reasons else ''}", flush=True)
    return False


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, names: list[str]) -> bool:
    job = defs.resolve_job_def(ingest_corpus_job.name)
    ok = True
    for name in names:
        print(f"[cptdata] ingest {name} ...", flush=True)
        ok = _report(_execute(job, instance, partition_key=name)) and ok
    return ok


def _run_job(defs: dg.Definitions, instance: dg.DagsterInstance, job, label: str) -> bool:
    """One run of a (non-partitioned) job, announced by ``label``; False when the run failed."""
    print(f"[cptdata] {label} ...", flush=True)
    return _report(_execute(defs.resolve_job_def(job.name), instance))


def base_model(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, base_model_job, "base model")


def score(defs: dg.Definitions, instance: dg.DagsterInstance, names: list[str]) -> bool:
    """Score a set of sources as one run: a partition range of the registered order (a single-run backfill)."""
    registered = instance.get_dynamic_partitions(corpus_sources.name)
    _check_known(names, registered)
    positions = sorted(registered.index(n) for n in names)
    if positions[-1] - positions[0] + 1 != len(positions):
        return all(score(defs, instance, [n]) for n in names)  # not contiguous: one run each
    first, last = registered[positions[0]], registered[positions[-1]]
    print(f"[cptdata] score {first} .. {last} ...", flush=True)
    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
    return _report(_execute(defs.resolve_job_def(score_corpus_job.name), instance, tags=tags))


def landscape(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, landscape_job, "landscape")


def pilots(defs: dg.Definitions, instance: dg.DagsterInstance, kinds: list[str], keys: list[str] | None = None) -> bool:
    """Every partition of the chosen pilot jobs (or the given ``keys``), one run each, in order (what a UI backfill
    queues), with progress: training tokens/s and an ETA."""
    jobs = {"regime": regime_pilots_job.name, "mixture": mixture_pilots_job.name, "follow-up": followup_pilots_job.name}
    ok = True
    for kind in kinds:
        job = defs.resolve_job_def(jobs[kind])
        todo = keys if keys is not None else job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        start, rate = time.perf_counter(), ""
        for i, key in enumerate(todo, 1):
            elapsed = time.perf_counter() - start
            eta = f", ETA {_duration(elapsed / (i - 1) * (len(todo) - i + 1))}" if i > 1 else ""
            print(f"[cptdata] {kind} pilot {i}/{len(todo)}: {key} ...{rate}{eta}", flush=True)
            result = _execute(job, instance, partition_key=key)
            ok = _report(result) and ok
            speed = _metadata_value(result, "train_tokens_per_second")
            rate = f" (last: {speed:,.0f} training tok/s)" if speed else ""
        if todo:
            print(f"[cptdata]   {len(todo)} {kind} pilots in {_duration(time.perf_counter() - start)}", flush=True)
    return ok


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _metadata_value(result, key: str):
    for event in result.get_asset_materialization_events():
        value = event.event_specific_data.materialization.metadata.get(key)
        if value is not None:
            return value.value
    return None


def ppl_law_rounds(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    """Fit the PPL law; while its answer asks for follow-up pilots, plan a round, run it and refit (each round is
    recorded in pilots/followup_regimes, and the final answer says how many rounds it took and why they stopped)."""
    if not _run_job(defs, instance, fit_ppl_law_job, "fit the PPL law"):
        return False
    planned: set[int] = set()
    while True:
        result = _execute(defs.resolve_job_def(plan_followups_job.name), instance)
        if not _report(result):
            return False
        new = _metadata_value(result, "new_regimes") or []
        if not new:
            print(f"[cptdata]   no follow-up round: {_metadata_value(result, 'reason')}", flush=True)
            return True
        round_ = _metadata_value(result, "round")
        if round_ in planned:  # its runs landed but the refit did not count them (e.g. the landscape moved)
            _err(f"follow-up round {round_} was planned again after its runs: stopping the rounds", level="warning")
            return True
        planned.add(round_)
        print(f"[cptdata] follow-up round {round_}: {_metadata_value(result, 'reason')}", flush=True)
        if not pilots(defs, instance, ["follow-up"], keys=list(new)):
            return False
        if not _run_job(defs, instance, fit_ppl_law_job, f"refit the PPL law with round {round_}"):
            return False


def domain_selection(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, domain_selection_job, "select domain data (DOS) toward the target landscape")


def confirm(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, confirm_claims_job, "confirmation runs (the papers' claims on this build)")


def laws(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, fit_laws_job, "fit laws")


def select(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, select_domain_data_job, "fit the PPL law and select domain data (DOS)")


def fit_cmr(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, fit_cmr_job, "fit the CMR")


def dataset(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    return _run_job(defs, instance, build_dataset_job, "build the dataset")


def export(profile: Profile, version: int | None, shard_chunks: int) -> bool:
    """Write (or verify) the exports of a dataset version outside Dagster: the same code as the asset's export."""
    import json

    from assets.dataset import export_version
    from cpt.models.base_model import ModelManifest
    from spark_jobs.dataset import DATASET_TABLE

    manifest_path = profile.home / "manifests" / "models" / "base_model.json"
    if not manifest_path.exists():
        raise UsageError(f"no base model has been materialized ({manifest_path} is missing): run cptdata demo")
    model = ModelManifest.from_json(json.loads(manifest_path.read_text()))
    with dg.build_resources({"delta": profile.delta, "spark": profile.spark}) as resources:
        store = resources.delta.store()
        version = store.version(DATASET_TABLE) if version is None else version
        if version is None:
            raise UsageError("no dataset has been built yet: run cptdata dataset (or cptdata demo)")
        print(f"[cptdata] export dataset v{version} ...", flush=True)
        folder, problems, manifest = export_version(resources.spark.session(), store, version, model, shard_chunks)
    for problem in problems:
        _err(f"export of v{version}: {problem}")
    state = "verified" if not problems else "MISMATCH"
    print(f"[cptdata]   {folder}: {len(manifest.get('files', []))} files, manifest {state}", flush=True)
    if problems:
        OUTCOME.gates_failed.append(f"dataset v{version}: manifest_matches_files")
    return not problems


def audit(profile: Profile, ref: str | None, uses_ref: str | None, as_json: bool, out: str | None) -> bool:
    """Print the lineage report of a table version, or what was built from a file or table version (no run)."""
    import json

    from assets.audit import report_for
    from cpt.lineage.report import to_markdown, uses, uses_markdown
    from spark_jobs.dataset import DATASET_TABLE

    with dg.build_resources({"delta": profile.delta, "mlflow": profile.mlflow}) as resources:
        store = resources.delta.store()
        if uses_ref is not None:
            target = str(Path(uses_ref).resolve()) if Path(uses_ref).exists() else uses_ref
            found = uses(store, store.tables(), target)
            print(json.dumps(found, indent=2) if as_json else uses_markdown(target, found), flush=True)
            return True
        table, _, version_text = (ref or DATASET_TABLE).partition("@")
        if not store.exists(table):
            raise UsageError(
                f"no table {table!r} under {store.root_uri}; tables: {', '.join(store.tables()) or 'none'}"
            )
        latest = store.version(table)
        if version_text and not version_text.isdigit():
            raise UsageError(f"{ref!r}: write TABLE@VERSION with a whole version number, e.g. {table}@{latest}")
        version = int(version_text) if version_text else latest
        if not 0 <= version <= latest:
            raise UsageError(f"{table} has no version {version} (latest: {latest})")
        report = report_for(store, resources.mlflow, table, version)
    markdown = to_markdown(report)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{table.replace('/', '_')}_v{version}"
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        (folder / f"{stem}.md").write_text(markdown)
        _err(f"wrote {folder / stem}.json and .md", level="info")
    print(json.dumps(report, indent=2, sort_keys=True, default=str) if as_json else markdown, flush=True)
    return True


def demo(
    defs: dg.Definitions, instance: dg.DagsterInstance, profile: Profile, names: list[str], skip_confirmations: bool
) -> None:
    """The main job, stage by stage, each under a header; then the stage times and the results block."""
    stages = [
        (f"ingest {len(names)} sources", lambda: ingest(defs, instance, names)),
        ("base model", lambda: base_model(defs, instance)),
        ("score every chunk (Spark)", lambda: score(defs, instance, names)),
        ("landscape", lambda: landscape(defs, instance)),
        ("regime pilots", lambda: pilots(defs, instance, ["regime"])),
        ("PPL law + follow-up pilots", lambda: ppl_law_rounds(defs, instance)),
        ("DOS selection", lambda: domain_selection(defs, instance)),
        ("mixture pilots", lambda: pilots(defs, instance, ["mixture"])),
        ("CMR", lambda: fit_cmr(defs, instance)),
        ("dataset + lineage report", lambda: dataset(defs, instance)),
    ]
    if not skip_confirmations:
        stages.append(("confirmations", lambda: confirm(defs, instance)))
    timings: list[tuple[str, float]] = []
    for i, (name, stage) in enumerate(stages, 1):
        print(f"\n[cptdata] ===== stage {i}/{len(stages)}: {name} =====", flush=True)
        start = time.perf_counter()
        ok = stage()
        timings.append((name, time.perf_counter() - start))
        if not ok:
            print(f"[cptdata] stage {name!r} failed: the stages after it did not run", flush=True)
            break
    from orchestration.results import results_block, stage_table

    print("\n[cptdata] ===== stage times =====", flush=True)
    for line in stage_table(timings):
        print(f"[cptdata] {line}", flush=True)
    uis = {"dagster": os.environ.get("CPTDATA_DAGSTER_UI") or "http://127.0.0.1:3000"}
    uis["mlflow"] = os.environ.get("CPTDATA_MLFLOW_UI") or "http://127.0.0.1:5000"
    with dg.build_resources({"delta": profile.delta}) as resources:
        lines = results_block(resources.delta.store(), OUTCOME.gates_failed, OUTCOME.findings, uis)
    print(f"\n[cptdata] ===== {lines[0]} =====", flush=True)
    for line in lines[1:]:
        print(f"[cptdata] {line}", flush=True)


def _check_known(names: list[str], known: list[str]) -> None:
    unknown = [n for n in dict.fromkeys(names) if n not in known]
    if unknown:
        listed = ", ".join(known) or "none"
        raise UsageError(
            f"unknown source{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; registered: {listed}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cptdata", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="Dagster's step events too, and the traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser(
        "demo",
        help="register sources and materialize the whole graph, stage by stage; ends with the results",
        description="The main job: ingest → base model → score → landscape → regime pilots → PPL law (+ follow-up "
        "pilots) → DOS selection → mixture pilots → CMR → dataset → confirmations. Reruns skip what is current. "
        "The sample corpora run at the demo's scale (CPTDATA_SAMPLE_FRACTION of their groups, default 0.15; "
        "CPTDATA_PRETRAIN_TOKENS, default 500k): about 8-10 minutes on 2 cores.",
    )
    p_demo.add_argument(
        "--budget",
        type=int,
        metavar="TOKENS",
        help="the dataset's size in tokens (T_target; the CMR is answered for it); default: the mixture pilots' T_max",
    )
    p_demo.add_argument(
        "--domain-eval",
        action="append",
        metavar="SOURCE",
        default=[],
        help="a source whose eval split is the held-out domain set of every pilot (repeatable); "
        "default: the eval-only domain sources",
    )
    p_demo.add_argument(
        "--general-eval", action="append", metavar="SOURCE", default=[], help="the same for the held-out general set"
    )
    p_demo.add_argument(
        "--followup-rounds", type=int, metavar="N", help="at most N rounds of follow-up pilots (default 2; 0: none)"
    )
    p_demo.add_argument("--seeds", type=int, metavar="N", help="seeds per confirmation arm (default 3)")
    p_demo.add_argument("--skip-confirmations", action="store_true", help="stop after the dataset")
    sub.add_parser("register", help="register sources as partitions")
    p_ingest = sub.add_parser("ingest", help="ingest the named sources")
    p_ingest.add_argument("sources", nargs="+")
    p_score = sub.add_parser("score", help="score the named sources (default: all) in one run")
    p_score.add_argument("sources", nargs="*")
    sub.add_parser("landscape", help="histograms and regimes of the current scores")
    sub.add_parser("laws", help="fit both scaling laws on the pilot tables")
    p_pilots = sub.add_parser("pilots", help="run every pilot partition")
    p_pilots.add_argument("kinds", nargs="*", metavar="regime|mixture", help="default: both")
    sub.add_parser(
        "followups",
        help="fit the PPL law and run the follow-up rounds it asks for",
        description="Fit laws/ppl_law; while its answer asks for follow-up pilots (optimum on the search region's "
        "boundary, or a wide interval) and rounds remain, build DOS regimes at and around the optimum, train them and "
        "refit. The answer says how many rounds it took and why they stopped.",
    )
    sub.add_parser("select", help="fit the PPL law and select domain data toward its target (DOS)")
    sub.add_parser("dataset", help="build the CPT dataset at the CMR answer")
    sub.add_parser(
        "confirm",
        help="re-check the papers' claims on the current build",
        description="CPT on the DOS subset vs a random and the lowest-PPL subset of equal tokens, at the CMR vs at "
        "CMR + 0.15, and the law's predicted loss vs the observed one; seeds 1-3 each; a verdict per claim "
        "(confirmed / not confirmed / inconclusive) in validation/confirmations, MLflow and the asset's checks.",
    )
    p_export = sub.add_parser("export", help="write the exports of a dataset version (checked first)")
    p_export.add_argument("version", nargs="?", type=int, help="dataset version (default: the latest)")
    p_export.add_argument("--shard-chunks", type=int, default=4096, help="chunks per shard (default 4096)")
    p_audit = sub.add_parser("audit", help="the lineage of a table version, or what was built from something")
    p_audit.add_argument("ref", nargs="?", metavar="TABLE[@VERSION]", help="default: the latest dataset version")
    p_audit.add_argument("--uses", metavar="FILE_OR_TABLE@VERSION", help="list everything built from it instead")
    p_audit.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p_audit.add_argument("--out", metavar="DIR", help="also write the report as DIR/<table>_v<N>.json and .md")
    return parser


PILOT_OPS = ("pilots__regime_runs", "pilots__mixture_runs", "pilots__followup_runs", "validation__confirmations")


def _demo_config(args: argparse.Namespace) -> dict[str, dict]:
    """The demo's options as run config of the assets they concern (validated by Dagster when a job runs)."""
    config: dict[str, dict] = {}

    def put(op: str, **fields) -> None:
        config.setdefault(op, {}).update(fields)

    for op in PILOT_OPS:
        if args.domain_eval:
            put(op, domain_eval_sources=args.domain_eval)
        if args.general_eval:
            put(op, general_eval_sources=args.general_eval)
    if args.budget is not None:
        if args.budget <= 0:
            raise UsageError(f"--budget must be a positive number of tokens, got {args.budget}")
        put("laws__cmr", target_tokens=args.budget)
        put("dataset__cpt_mixture", target_tokens=args.budget)
        from assets.dataset import DEFAULT_BUDGET

        put("dataset__domain_selection", budget_tokens=max(DEFAULT_BUDGET, args.budget))
    if args.followup_rounds is not None:
        if args.followup_rounds < 0:
            raise UsageError(f"--followup-rounds must be 0 or more, got {args.followup_rounds}")
        put("laws__ppl_law", followup_rounds=args.followup_rounds)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        put("validation__confirmations", seeds=list(range(1, args.seeds + 1)))
    return config


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C (so the run is marked failed), where SIGTERM has its default action."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    with suppress(ValueError):  # not the main thread: leave signals alone
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv``; return the exit code (see the module docstring)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "pilots" and not set(args.kinds) <= {"regime", "mixture"}:
            parser.error(f"pilot kinds are regime and mixture, not {' '.join(args.kinds)}")
    except SystemExit as exc:  # argparse has printed its usage line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    LOG_LEVEL["level"] = "DEBUG" if args.verbose else "INFO"
    OP_CONFIG.clear()
    OUTCOME.failed_runs.clear()
    OUTCOME.gates_failed.clear()
    OUTCOME.findings.clear()
    try:
        with _sigterm_interrupts():
            if args.command == "demo":
                OP_CONFIG.update(_demo_config(args))
            profile = load_profile(os.environ)  # every setting validated before any work
            for warning in profile.warnings:
                _err(warning, level="warning")
            with _instance(profile) as instance:  # also the current instance of the definitions loaded here
                return _run_marking_interrupted(args, profile, instance)
    except (ConfigError, UsageError) as exc:
        _err(str(exc))
        if args.verbose:
            traceback.print_exc()
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        _err(f"{type(exc).__name__}: {first}" + ("" if args.verbose else " (-v for the traceback)"))
        if args.verbose:
            traceback.print_exc()
        return EXIT_RUN_FAILED


def _run_marking_interrupted(args: argparse.Namespace, profile: Profile, instance: dg.DagsterInstance) -> int:
    try:
        mark_dead_cli_runs(instance)
        return _run(args, profile, instance)
    except KeyboardInterrupt:
        mark_dead_cli_runs(instance, this_process=True)  # a run Dagster did not see interrupted
        _err("interrupted; the run in progress is marked failed")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, profile: Profile, instance: dg.DagsterInstance) -> int:
    with warnings.catch_warnings():
        if not args.verbose:  # notes about Dagster APIs the code location uses: not for a CLI user's stderr
            for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
                warnings.simplefilter("ignore", category)
        from orchestration.definitions import build_definitions

        defs = build_definitions(os.environ, profile)
    names = register(defs, instance)
    print(
        f"[cptdata] profile {profile.name}; DAGSTER_HOME={os.environ['DAGSTER_HOME']}; sources: {', '.join(names)}",
        file=sys.stderr if args.command == "audit" else sys.stdout,  # audit's stdout is the report alone
        flush=True,
    )
    if args.command == "register":
        return EXIT_OK
    if args.command in ("ingest", "score"):
        _check_known(args.sources, names)
    if args.command == "ingest":
        ingest(defs, instance, list(dict.fromkeys(args.sources)))
    elif args.command == "score":
        score(defs, instance, list(dict.fromkeys(args.sources)) or names)
    elif args.command == "landscape":
        landscape(defs, instance)
    elif args.command == "laws":
        laws(defs, instance)
    elif args.command == "pilots":
        pilots(defs, instance, args.kinds or ["regime", "mixture"])
    elif args.command == "followups":
        ppl_law_rounds(defs, instance)
    elif args.command == "select":
        select(defs, instance)
    elif args.command == "confirm":
        confirm(defs, instance)
    elif args.command == "dataset":
        dataset(defs, instance)
    elif args.command == "export":
        export(profile, args.version, args.shard_chunks)
    elif args.command == "audit":
        audit(profile, args.ref, args.uses, args.json, args.out)
        return EXIT_OK  # the report is the output: no "done" line after it
    else:
        demo(defs, instance, profile, names, skip_confirmations=args.skip_confirmations)
    gates = OUTCOME.gates_failed
    shown = f"; quality gates that failed (see their metadata): {', '.join(gates)}" if gates else ""
    if OUTCOME.findings:
        shown += f"; checks that failed without blocking anything: {', '.join(OUTCOME.findings)}"
    code = OUTCOME.code()
    print(f"[cptdata] {'done' if code == EXIT_OK else 'finished with failures'}{shown} (exit code {code})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
