"""CLI runs execute in-process, where the daemon does not monitor them: a CLI that dies must not leave its run
STARTED forever. The next ``cptdata`` command marks the runs of dead CLI processes failed; an interrupt marks its own
run failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.resources import DeltaStoreResource
from orchestration.cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    HOST_TAG,
    PID_TAG,
    PROCESS_START_TAG,
    _host,
    main,
    mark_dead_cli_runs,
)
from tests.reliability.test_cli_exit_codes import cli_env_fixture  # noqa: F401 (the cli_env fixture)

REPO = Path(__file__).resolve().parents[2]

# The CLI, held inside its ingest run (in the step, before any table is touched) until it is killed.
HELD_CLI = """
import pathlib, sys, time
from assets.resources import DeltaStoreResource
def held(self):
    pathlib.Path(sys.argv[1]).write_text("in the run")
    time.sleep(300)
DeltaStoreResource.store = held
from orchestration.cli import main
sys.exit(main(["ingest", "notes"]))
"""


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the CLI exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the CLI did not reach its run in time"
        time.sleep(0.2)


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]


def test_run_of_a_killed_cli_is_marked_failed_by_the_next_command(cli_env, tmp_path):
    marker = tmp_path / "in-run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_CLI, str(marker)],
        cwd=REPO,
        env=dict(os.environ),  # cli_env's CPTDATA_HOME, DAGSTER_HOME, CPTDATA_SOURCES
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker.exists, proc)
        with dg.DagsterInstance.from_config(str(cli_env["dagster"])) as instance:
            [run] = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.STARTED
            assert (run.tags[PID_TAG], run.tags[HOST_TAG]) == (str(proc.pid), _host())
            assert mark_dead_cli_runs(instance) == []  # its process is alive: left alone
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # what the issue saw

            assert main(["register"]) == EXIT_OK  # any next command
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
            [message] = failure_messages(instance, run.run_id)
            assert f"process {proc.pid}" in message and "gone" in message
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stderr.close()


def test_a_pid_reused_by_another_process_does_not_keep_a_dead_run_alive(tmp_path):
    me = os.getpid()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        tags = {PID_TAG: str(me), HOST_TAG: _host()}
        reused = dg.DagsterRun(
            job_name="ingest_corpus",
            status=dg.DagsterRunStatus.STARTED,
            tags=tags
            | {
                PROCESS_START_TAG: "1.00"  # the run's process started in 1970: this live pid is another process now
            },
        )
        live = dg.DagsterRun(job_name="ingest_corpus", status=dg.DagsterRunStatus.STARTED, tags=dict(tags))
        other_host = dg.DagsterRun(
            job_name="ingest_corpus",
            status=dg.DagsterRunStatus.STARTED,
            tags={PID_TAG: "999999999", HOST_TAG: "another-host"},  # its process cannot be checked from here
        )
        daemon = dg.DagsterRun(job_name="ingest_corpus", status=dg.DagsterRunStatus.STARTED)  # not a CLI run
        reexecution = dg.DagsterRun(  # re-executed from the UI: it copies the dead parent's tags, but no CLI runs it
            job_name="ingest_corpus",
            status=dg.DagsterRunStatus.STARTED,
            tags={PID_TAG: "999999999", HOST_TAG: _host()},
            parent_run_id=reused.run_id,
            root_run_id=reused.run_id,
        )
        for run in (reused, live, other_host, daemon, reexecution):
            instance.add_run(run)
        assert [r.run_id for r in mark_dead_cli_runs(instance)] == [reused.run_id]
        statuses = {r.run_id: r.status for r in instance.get_runs()}
        assert statuses[reused.run_id] == dg.DagsterRunStatus.FAILURE
        assert {statuses[r.run_id] for r in (live, other_host, daemon, reexecution)} == {dg.DagsterRunStatus.STARTED}


@pytest.fixture
def sigint_raises():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # this harness may start with it ignored
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_cli_run_marks_it_failed_and_exits_130(cli_env, monkeypatch, sigint_raises):
    in_run = threading.Event()

    def held(self):
        in_run.set()
        for _ in range(600):  # the SIGINT below interrupts this wait
            time.sleep(0.1)
        raise AssertionError("not interrupted")

    def interrupt(main_thread: int) -> None:
        if in_run.wait(60):
            signal.pthread_kill(main_thread, signal.SIGINT)  # Ctrl-C, delivered to the thread running the CLI

    monkeypatch.setattr(DeltaStoreResource, "store", held)
    interrupter = threading.Thread(target=interrupt, args=(threading.get_ident(),))
    interrupter.start()
    try:
        code = main(["ingest", "notes", "noisy"])
    finally:
        interrupter.join()
    assert code == EXIT_INTERRUPTED
    with dg.DagsterInstance.from_config(str(cli_env["dagster"])) as instance:
        [run] = instance.get_runs()  # the interrupt stops the command: noisy never started
        assert (run.tags["dagster/partition"], run.status) == ("notes", dg.DagsterRunStatus.FAILURE)


def test_an_interrupt_outside_dagster_still_marks_the_run_of_this_process_failed(cli_env, monkeypatch):
    """The interrupt lands where Dagster cannot see it (e.g. between creating the run and starting it)."""
    created = {}

    def interrupted_ingest(defs, instance, names):
        from orchestration.cli import _process_tags

        run = dg.DagsterRun(job_name="ingest_corpus", status=dg.DagsterRunStatus.NOT_STARTED, tags=_process_tags())
        created["run"] = instance.add_run(run)
        raise KeyboardInterrupt

    monkeypatch.setattr("orchestration.cli.ingest", interrupted_ingest)
    assert main(["ingest", "notes"]) == EXIT_INTERRUPTED
    with dg.DagsterInstance.from_config(str(cli_env["dagster"])) as instance:
        run = instance.get_run_by_id(created["run"].run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert "interrupted" in failure_messages(instance, run.run_id)[0]
