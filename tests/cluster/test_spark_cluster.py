"""The Spark jobs beyond ``local[N]``: a Spark standalone master with two workers, and a Spark Connect server, all on
loopback and started here (the scripts ship in the ``pyspark`` package), each stopped by PID. The scoring and
landscape jobs run through their ``spark-submit`` entry points against ``local[2]``, the standalone cluster and
``sc://127.0.0.1``, on the same input; the results must be equal.

Slow (JVMs start, ~1–2 min); run when ``CPTDATA_CLUSTER_TESTS=1`` (CI sets it), skipped with that reason elsewhere.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from cpt.delta_store import DeltaStore
from cpt.models.base_model import resolve_local
from spark_jobs.scoring import SCORES_TABLE
from tests.spark_jobs.test_landscape_job import synthetic_scores
from tests.spark_jobs.test_scoring_job import POLICY, add_source

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CPTDATA_CLUSTER_TESTS") != "1",
        reason="starts a Spark standalone cluster and a Spark Connect server; set CPTDATA_CLUSTER_TESTS=1",
    ),
]

SPARK_HOME = Path(__import__("pyspark").__file__).parent
LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what: str, procs, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: a process exited with {dead[0].returncode}")
        if ready():
            return
        time.sleep(1.0)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started, by its process group:
    SIGTERM, then SIGKILL (background JVMs and servers may ignore a plain SIGTERM); then SIGKILL what it had started
    in sessions of their own (the Dagster daemon's code servers, which outlived it otherwise)."""
    started = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        out += below
        todo += below
    return out


def port_open(port: int) -> bool:
    with closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return sum(w["state"] == "ALIVE" for w in json.load(r)["workers"])
    except OSError:
        return 0


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Spark settings for the three engines; the cluster and the Connect server run until the module ends."""
    logs = tmp_path_factory.mktemp("spark-logs")
    env = os.environ | {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "SPARK_HOME": str(SPARK_HOME)}
    env.pop("SPARK_REMOTE", None)
    master_port, master_ui, connect_port = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    procs = []

    def start(name, *args):
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group: the JVM and what it starts stop together
            )
        )

    try:
        master = ("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port))
        start("master", *master, "--webui-port", str(master_ui))
        wait_until(lambda: port_open(master_port), "the standalone master", procs)
        for i in (1, 2):
            worker = ("org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1", "--cores", "1")
            start(f"worker{i}", *worker, "--memory", "2g", "--webui-port", str(free_port()))
        wait_until(lambda: alive_workers(master_ui) == 2, "two standalone workers", procs)
        connect_conf = {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(connect_port),
            "spark.pyspark.python": sys.executable,
        } | LOOPBACK
        submit = ["org.apache.spark.deploy.SparkSubmit", "--master", "local[2]", "--name", "cptdata-connect"]
        for key, value in connect_conf.items():
            submit += ["--conf", f"{key}={value}"]
        start(
            "connect", *submit, "--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "spark-internal"
        )
        wait_until(lambda: port_open(connect_port), "the Spark Connect server", procs)
        standalone = {
            "master": master_url,
            "extra_conf": LOOPBACK | {"spark.pyspark.python": sys.executable, "spark.executor.memory": "1g"},
        }
        yield {
            "local": {"master": "local[2]"},
            "standalone": standalone,
            "connect": {"connect_url": f"sc://127.0.0.1:{connect_port}"},
        }
    finally:
        for proc in procs:
            stop_group(proc)
        assert all(p.poll() is not None for p in procs)


def submit(module: str, config: dict, tmp_path: Path, name: str) -> dict:
    """``python -m <module> job.json`` in its own process (what spark-submit runs); its printed result."""
    job = tmp_path / f"{name}.json"
    job.write_text(json.dumps(config))
    env = os.environ | {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(
        [sys.executable, "-m", module, str(job)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_landscape_job_gives_the_same_partials_on_every_engine(engines, tmp_path, commit):
    store = DeltaStore(str(tmp_path / "delta"))
    version = store.overwrite(SCORES_TABLE, synthetic_scores(), commit, predicate=None)
    results = {
        name: submit(
            "spark_jobs.landscape",
            {"delta_root": store.root_uri, "spark": spark, "job": {"scores_version": version}},
            tmp_path,
            name,
        )
        for name, spark in engines.items()
    }

    def exact(result):
        return {
            json.dumps(p["group"], sort_keys=True): (p["chunk_counts"], p["token_counts"], p["count"], p["tokens"])
            for p in result["partials"]
        }

    def sums(result):
        keys = ("sum_ppl", "sum_ppl_sq", "sum_log_ppl", "sum_log_ppl_sq", "min_ppl", "max_ppl")
        return {json.dumps(p["group"], sort_keys=True): [p[k] for k in keys] for p in result["partials"]}

    local = results["local"]
    assert len(local["partials"]) > 4
    for name in ("standalone", "connect"):
        assert exact(results[name]) == exact(local), name
        for group, values in sums(results[name]).items():
            assert values == pytest.approx(sums(local)[group], rel=1e-12), (name, group)


def test_the_scoring_job_gives_the_same_scores_on_every_engine(engines, tmp_path, commit, tiny_model_dir):
    seed = DeltaStore(str(tmp_path / "seed"))
    texts = [" ".join(["alpha beta gamma delta epsilon"] * (4 + i)) for i in range(12)]
    version = add_source(seed, commit, tmp_path, "alpha", texts)
    manifest = resolve_local(tiny_model_dir)
    scores = {}
    for name, spark in engines.items():
        root = tmp_path / name
        shutil.copytree(tmp_path / "seed", root)  # the same documents table, scored into each engine's own store
        job = {
            "documents_version": version,
            "model_path": str(tiny_model_dir),
            "model_revision": manifest.revision,
            "run_id": f"run-{name}",
            "policy": {"length": POLICY.length, "min_tokens": POLICY.min_tokens},
            "ship_model": name == "standalone",  # the model as an archive to the workers (no shared path assumed)
        }
        printed = submit("spark_jobs.scoring", {"delta_root": str(root), "spark": spark, "job": job}, tmp_path, name)
        assert printed["chunks_scored"] > 0
        table = DeltaStore(str(root)).read(SCORES_TABLE)
        scores[name] = dict(
            zip(
                table["chunk_id"].to_pylist(),
                zip(table["n_tokens"].to_pylist(), table["sum_nll"].to_pylist(), strict=True),
                strict=True,
            )
        )
    for name in ("standalone", "connect"):
        assert scores[name].keys() == scores["local"].keys(), name
        for chunk, (n_tokens, nll) in scores[name].items():
            assert n_tokens == scores["local"][chunk][0]
            assert nll == pytest.approx(scores["local"][chunk][1], abs=1e-4)
