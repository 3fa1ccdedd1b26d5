"""The CLI's exit codes tell a scheduler what happened: 0 success, 1 a run failed, 2 usage or configuration error
(nothing ran), 3 a blocking quality gate failed (nothing landed); errors are one line on stderr, no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from assets.corpus import DOCUMENTS_TABLE
from cpt.delta_store import DeltaStore
from orchestration.cli import EXIT_GATE_FAILED, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, main


def write_jsonl(path: Path, texts: list[str], broken: int = 0) -> Path:
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    lines += ['{"id": "broken", "text": "unterminated'] * broken
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(name="cli_env")
def cli_env_fixture(tmp_path, monkeypatch) -> dict[str, Path]:
    """A fresh CPTDATA_HOME and DAGSTER_HOME, and a sources file: ``notes`` (clean), ``noisy`` (30 % of its
    records malformed: fails the 1 % reject gate) and ``missing`` (no file: its run fails)."""
    for key in list(os.environ):
        if key.startswith("CPTDATA_") or key in {"MLFLOW_TRACKING_URI", "DAGSTER_HOME"}:
            monkeypatch.delenv(key)
    notes = write_jsonl(tmp_path / "notes.jsonl", [f"clinical note number {i} about fever" for i in range(20)])
    noisy = write_jsonl(tmp_path / "noisy.jsonl", [f"another text {i} on asthma care" for i in range(7)], broken=3)
    sources = tmp_path / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {"name": "notes", "path": str(notes), "format": "jsonl", "role": "domain"},
                {"name": "noisy", "path": str(noisy), "format": "jsonl", "role": "general"},
                {"name": "missing", "path": str(tmp_path / "absent.jsonl"), "format": "jsonl", "role": "general"},
            ]
        )
    )
    paths = {"home": tmp_path / "home", "dagster": tmp_path / "dagster", "sources": sources}
    monkeypatch.setenv("CPTDATA_HOME", str(paths["home"]))
    monkeypatch.setenv("DAGSTER_HOME", str(paths["dagster"]))
    monkeypatch.setenv("CPTDATA_SOURCES", str(sources))
    return paths


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def runs(paths: dict[str, Path]) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(paths["dagster"])) as instance:
        return list(instance.get_runs())


def test_exit_codes_tell_success_gate_failure_and_run_failure_apart(cli_env, capsys):
    store = DeltaStore(str(cli_env["home"] / "delta"))
    assert main(["ingest", "notes"]) == EXIT_OK
    version = store.version(DOCUMENTS_TABLE)
    assert version is not None

    # 30 % malformed > CPTDATA_MAX_REJECT_RATE (1 %): the blocking gate fails, the partition is not written.
    assert main(["ingest", "noisy"]) == EXIT_GATE_FAILED
    assert store.version(DOCUMENTS_TABLE) == version
    assert "reject_rate_below_threshold" in capsys.readouterr().out

    # A run that fails (the source's file does not exist), even next to a failed gate: 1.
    assert main(["ingest", "noisy", "missing"]) == EXIT_RUN_FAILED
    out = capsys.readouterr().out
    assert "FAILED" in out and "absent.jsonl" in out  # the run's error, in one line
    assert [r.status for r in runs(cli_env)].count(dg.DagsterRunStatus.FAILURE) == 3  # noisy twice, missing once


def test_unknown_source_is_a_usage_error_and_runs_nothing(cli_env, capsys):
    assert main(["ingest", "notes", "nope"]) == EXIT_USAGE
    assert one_line_error(capsys.readouterr().err) == (
        "cptdata: error: unknown source 'nope'; registered: missing, noisy, notes"
    )
    assert main(["score", "unknown"]) == EXIT_USAGE  # was: ValueError: 'unknown' is not in list
    assert "unknown source 'unknown'; registered: missing, noisy, notes" in one_line_error(capsys.readouterr().err)
    assert runs(cli_env) == []  # not even the known source was ingested


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CPTDATA_MAX_REJECT_RATE", "abc", "CPTDATA_MAX_REJECT_RATE='abc'"),
        ("CPTDATA_MAX_REJECT_RATE", "nan", "CPTDATA_MAX_REJECT_RATE='nan'"),
        ("CPTDATA_PROFILE", "laptop", "CPTDATA_PROFILE='laptop': is not a profile; choose one of quickstart"),
    ],
)
def test_bad_setting_exits_2_with_one_line_before_any_work(cli_env, monkeypatch, capsys, variable, value, expected):
    monkeypatch.setenv(variable, value)
    assert main(["ingest", "notes"]) == EXIT_USAGE
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"cptdata: error: {expected}")
    assert not cli_env["dagster"].exists() and not cli_env["home"].exists()  # no instance, no table was touched


def test_usage_errors_exit_2_and_verbose_shows_the_traceback(cli_env, capsys):
    assert main([]) == EXIT_USAGE
    assert main(["pilots", "sideways"]) == EXIT_USAGE
    assert "pilot kinds are regime and mixture" in capsys.readouterr().err
    assert main(["-v", "ingest", "nope"]) == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    assert main(["--help"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "Exit codes" in text
    for code, meaning in [("0", "succeeded"), ("1", "a run failed"), ("2", "usage or configuration"), ("3", "gate")]:
        assert any(line.strip().startswith(code) and meaning in line for line in text.splitlines()), code


def test_dagster_step_events_show_with_verbose_only_and_stage_progress_always(cli_env, capfd):
    assert main(["ingest", "notes"]) == EXIT_OK
    quiet = "".join(capfd.readouterr())
    assert "STEP_START" not in quiet and "RESOURCE_INIT" not in quiet  # Dagster's DEBUG events
    assert "ingesting 'notes'" in quiet and "[cptdata]   corpus/documents:" in quiet  # progress and the result
    assert main(["-v", "ingest", "notes"]) == EXIT_OK
    assert "STEP_START" in "".join(capfd.readouterr())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--budget", "0"], "--budget must be a positive number of tokens, got 0"),
        (["demo", "--followup-rounds", "-1"], "--followup-rounds must be 0 or more, got -1"),
        (["demo", "--seeds", "0"], "--seeds must be at least 1, got 0"),
    ],
)
def test_bad_demo_options_exit_2_with_one_line_before_any_work(cli_env, capsys, argv, expected):
    assert main(argv) == EXIT_USAGE
    assert one_line_error(capsys.readouterr().err) == f"cptdata: error: {expected}"
    assert not cli_env["dagster"].exists() and not cli_env["home"].exists()


def test_demo_options_become_the_run_config_of_the_assets_they_concern():
    from assets.dataset import DEFAULT_BUDGET
    from orchestration.cli import PILOT_OPS, _demo_config, _parser

    args = _parser().parse_args(
        [
            "demo",
            "--budget",
            "200000",
            "--domain-eval",
            "a",
            "--domain-eval",
            "b",
            "--followup-rounds",
            "0",
            "--seeds",
            "2",
        ]
    )
    config = _demo_config(args)
    assert all(config[op]["domain_eval_sources"] == ["a", "b"] for op in PILOT_OPS)
    assert all("general_eval_sources" not in config[op] for op in PILOT_OPS)  # not given: the default stays
    assert config["laws__cmr"] == {"target_tokens": 200_000} == config["dataset__cpt_mixture"]
    assert config["dataset__domain_selection"] == {"budget_tokens": max(DEFAULT_BUDGET, 200_000)}
    assert config["laws__ppl_law"] == {"followup_rounds": 0}
    assert config["validation__confirmations"]["seeds"] == [1, 2]
    assert _demo_config(_parser().parse_args(["demo"])) == {}  # no option: every asset's defaults


def test_the_results_block_says_what_is_missing_on_an_empty_store(tmp_path):
    from orchestration.results import results_block, stage_table

    store = DeltaStore(str(tmp_path / "delta"))
    uis = {"dagster": "http://127.0.0.1:3000", "mlflow": "http://127.0.0.1:5000"}
    lines = results_block(store, ["corpus/documents:reject_rate_below_threshold"], [], uis)
    assert lines[0] == "RESULTS"
    for expected in (
        "corpus: nothing ingested",
        "landscape: not built",
        "target landscape: no PPL-law fit",
        "CMR: no fit",
        "dataset: not built",
        "confirmations: not run",
    ):
        assert expected in lines, (expected, lines)
    assert "blocking gates that failed: corpus/documents:reject_rate_below_threshold" in lines
    assert any("make ui" in line and "http://127.0.0.1:5000" in line for line in lines)
    table = stage_table([("ingest", 4.0), ("score", 116.0)])
    assert table[-1].split()[:2] == ["total", "120.0"] and "(2.0 min)" in table[-1]
