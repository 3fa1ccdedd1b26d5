import sys

import pytest

from spark_jobs.session import SparkSettings, object_store_conf, session_conf


def test_local_sessions_bind_to_loopback_and_use_this_interpreter():
    conf = session_conf(SparkSettings(master="local[3]"))
    assert conf["spark.master"] == "local[3]"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"


def test_connect_sessions_set_no_master_and_gpu_amounts_are_passed():
    conf = session_conf(
        SparkSettings(connect_url="sc://127.0.0.1:15002", executor_gpus=4, task_gpus=1, gpu_discovery_script="/x.sh")
    )
    assert "spark.master" not in conf and "spark.pyspark.python" not in conf
    assert conf["spark.executor.resource.gpu.amount"] == "4"
    assert conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.executor.resource.gpu.discoveryScript"] == "/x.sh"
    with pytest.raises(ValueError, match="task_gpus"):
        session_conf(SparkSettings(executor_gpus=1))


@pytest.mark.spark
def test_built_session_has_arrow_on(spark):
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.range(10).count() == 10


def test_partition_folders_escape_and_refuse_what_spark_cannot_read_back():
    import math

    import pyarrow as pa

    from spark_jobs.parquet_files import _split_by, partition_dir

    assert partition_dir({"source": "a/b c", "n": None}) == "source=a%2Fb%20c/n=__HIVE_DEFAULT_PARTITION__"
    with pytest.raises(ValueError, match="not ASCII"):
        partition_dir({"source": "café"})
    table = pa.table({"x": [1.0, math.nan, math.nan, None], "v": [1, 2, 3, 4]})
    groups = {str(values["x"]): rows.column("v").to_pylist() for values, rows in _split_by(table, ["x"])}
    assert groups == {"1.0": [1], "nan": [2, 3], "None": [4]}


def test_the_delta_roots_object_store_options_reach_the_executors_as_s3a_settings():
    minio = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",  # delta-rs only: not for Spark
    }
    conf = session_conf(SparkSettings(master="spark://127.0.0.1:7077", storage_options=minio))
    assert {k: v for k, v in conf.items() if k.startswith("spark.hadoop.")} == {
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
        "spark.hadoop.fs.s3a.access.key": "key",
        "spark.hadoop.fs.s3a.secret.key": "secret",
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
    }
    temporary = object_store_conf({"aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_session_token": "t"})
    assert temporary["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith("TemporaryAWSCredentialsProvider")
    assert object_store_conf({}) == {} and object_store_conf({"timeout": "30s"}) == {}
    assert "secret" not in repr(SparkSettings(storage_options=minio))  # settings may be logged; options are not
    remote = session_conf(SparkSettings(connect_url="sc://127.0.0.1:15002", storage_options=minio))
    assert not any(k.startswith("spark.hadoop.") for k in remote)  # the Connect server has its own
