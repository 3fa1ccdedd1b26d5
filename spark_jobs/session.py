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
        "spark.ui.enabled": str(settings.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
    }
    if settings.connect_url is None:
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


def build_session(settings: SparkSettings) -> SparkSession:
    """Get or create the session for these settings."""
    from pyspark.sql import SparkSession

    if settings.is_local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = SparkSession.builder
    if settings.connect_url is not None:
        builder = builder.remote(settings.connect_url)
    for key, value in session_conf(settings).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
