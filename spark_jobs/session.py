"""The one place a SparkSession is built.

Local by default (``local[N]``), a standalone/YARN/Kubernetes master URL, or a Spark Connect ``sc://`` URL. Arrow
is always on; locally the driver binds to loopback and the Python workers run the driver's own interpreter, so that
the platform's packages (and the same torch) are importable in every task.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[2]"
    connect_url: str | None = None  # sc://host:15002 — takes precedence over master
    app_name: str = "cptdata"
    driver_memory: str = "2g"
    shuffle_partitions: int = 8
    arrow_batch_rows: int = 2048
    ui_enabled: bool = False
    # GPU scheduling: one scoring task owns ``task_gpus`` of an executor's ``executor_gpus``.
    executor_gpus: int = 0
    task_gpus: float = 0.0
    gpu_discovery_script: str | None = None
    extra_conf: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.connect_url is None and self.master.startswith("local")


def session_conf(settings: SparkSettings) -> dict[str, str]:
    """The Spark configuration a session is built with (pure, so it can be inspected and tested)."""
    conf = {
        "spark.app.name": settings.app_name,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.arrow_batch_rows),
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
    }
    if settings.connect_url is None:  # the UI is the server's business under Spark Connect
        conf["spark.ui.enabled"] = str(settings.ui_enabled).lower()
        conf["spark.ui.showConsoleProgress"] = "false"
        conf["spark.master"] = settings.master
        conf["spark.driver.memory"] = settings.driver_memory
    if settings.is_local:
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.pyspark.python"] = sys.executable
        conf["spark.pyspark.driver.python"] = sys.executable
    if settings.executor_gpus > 0:
        if settings.task_gpus <= 0:
            raise ValueError("executor_gpus > 0 needs task_gpus > 0 (e.g. 1 for one GPU per scoring task)")
        conf["spark.executor.resource.gpu.amount"] = str(settings.executor_gpus)
        conf["spark.task.resource.gpu.amount"] = str(settings.task_gpus)
        if settings.gpu_discovery_script:
            conf["spark.executor.resource.gpu.discoveryScript"] = settings.gpu_discovery_script
    conf.update(settings.extra_conf)
    return conf


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect client session (no SparkContext, no JVM on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark: SparkSession) -> int:
    """How many tasks the cluster runs at once: the SparkContext's figure, or through Spark Connect (no
    SparkContext) the server's ``spark.default.parallelism``, else its shuffle partitions."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    value = spark.conf.get("spark.default.parallelism", None) or spark.conf.get("spark.sql.shuffle.partitions")
    return max(1, int(value))


def build_session(settings: SparkSettings) -> SparkSession:
    """Get or create the session for these settings."""
    from pyspark.sql import SparkSession

    if settings.is_local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    conf = session_conf(settings)
    if settings.connect_url is None and "spark.pyspark.python" in conf:
        # PySpark tells the executors which interpreter to start from this variable (a cluster's executors must
        # have that interpreter, with this project installed, at the same path)
        os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    builder = SparkSession.builder
    if settings.connect_url is not None:
        builder = builder.remote(settings.connect_url)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
