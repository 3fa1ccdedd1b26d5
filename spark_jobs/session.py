"""The one place a SparkSession is built.

Local by default (``local[N]``), a standalone/YARN/Kubernetes master URL, or a Spark Connect ``sc://`` URL. Arrow
is always on; locally the driver binds to loopback and the Python workers run the driver's own interpreter, so that
the platform's packages (and the same torch) are importable in every task.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[2]"
    connect_url: str | None = field(default=None, repr=False)  # sc://host:15002 (may hold a token); over master
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
    # the Delta root's object-store options (delta-rs keys, e.g. AWS_ENDPOINT_URL): the executors read the same files
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return self.connect_url is None and self.master.startswith("local")


# delta-rs / object_store S3 option (lower case) → the Hadoop S3A setting Spark's executors read the same files with
_S3A = {
    "aws_access_key_id": "fs.s3a.access.key",
    "access_key_id": "fs.s3a.access.key",
    "aws_secret_access_key": "fs.s3a.secret.key",
    "secret_access_key": "fs.s3a.secret.key",
    "aws_session_token": "fs.s3a.session.token",
    "session_token": "fs.s3a.session.token",
    "aws_endpoint_url": "fs.s3a.endpoint",
    "aws_endpoint": "fs.s3a.endpoint",
    "endpoint_url": "fs.s3a.endpoint",
    "endpoint": "fs.s3a.endpoint",
    "aws_region": "fs.s3a.endpoint.region",
    "region": "fs.s3a.endpoint.region",
}


def object_store_conf(storage_options: Mapping[str, str]) -> dict[str, str]:
    """The Spark (Hadoop S3A) settings for the Delta root's delta-rs storage options, so that executors read and
    write the tables delta-rs commits: credentials, endpoint (an S3-compatible store such as MinIO: path-style access
    unless virtual-hosted style is asked for), region, plain HTTP. Options Spark has no use for are left out. The
    cluster needs the hadoop-aws jars (they do not ship with the pyspark package)."""
    options = {k.lower(): str(v) for k, v in storage_options.items()}
    conf = {f"spark.hadoop.{_S3A[k]}": v for k, v in options.items() if k in _S3A}
    if not conf:
        return {}
    if "spark.hadoop.fs.s3a.endpoint" in conf:
        virtual = options.get("aws_virtual_hosted_style_request", "false").lower() == "true"
        conf["spark.hadoop.fs.s3a.path.style.access"] = str(not virtual).lower()
    if options.get("aws_allow_http", options.get("allow_http", "false")).lower() == "true":
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = "false"
    if "spark.hadoop.fs.s3a.session.token" in conf:
        provider = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = provider
    return conf


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
    if settings.connect_url is None:  # a Spark Connect server is started with its own Hadoop settings
        conf.update(object_store_conf(settings.storage_options))
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


@contextlib.contextmanager
def job_session(settings: SparkSettings) -> Iterator[SparkSession]:
    """The session of a ``spark-submit`` entry point: stopped at the end — a live JVM gateway when the interpreter
    exits can abort the process — unless it was already running in this process (then it is the caller's)."""
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()
    spark = build_session(settings)
    try:
        yield spark
    finally:
        if existing is None:
            spark.stop()
