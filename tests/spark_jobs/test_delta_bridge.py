import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from cpt.delta_store import DeltaStoreError
from spark_jobs.delta_bridge import read_snapshot, write_parquet_files, write_to_delta

pytestmark = pytest.mark.spark

SCHEMA = pa.schema([("k", pa.string()), ("source", pa.string()), ("n", pa.int64()), ("x", pa.float64())])


def batch(source, start, count):
    return pa.table(
        {
            "k": [f"{source}-{i}" for i in range(start, start + count)],
            "source": [source] * count,
            "n": list(range(start, start + count)),
            "x": [i / 7 for i in range(start, start + count)],
        },
        schema=SCHEMA,
    )


@pytest.fixture
def versions(store, commit):
    """Version 0: 5 rows of a; 1: + 3 rows of b; 2: partition a replaced by 2 rows."""
    store.append("t", batch("a", 0, 5), commit, partition_by=["source"])
    store.append("t", batch("b", 0, 3), commit, partition_by=["source"])
    store.overwrite("t", batch("a", 100, 2), commit, predicate="source = 'a'", partition_by=["source"])
    return store


def as_rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_spark_reads_exactly_the_pinned_version(spark, versions):
    for version in (0, 1, 2):
        df, snap = read_snapshot(spark, versions, "t", version)
        assert snap.version == version
        assert df.columns == SCHEMA.names  # the partition column survives, in table order
        assert as_rows(df) == sorted(tuple(r.values()) for r in versions.read("t", version).to_pylist())
    df, _ = read_snapshot(spark, versions, "t", 0)
    assert df.filter(F.col("source") == "b").count() == 0 and df.count() == 5


def test_a_spark_write_is_one_version_and_recommitting_adds_nothing(spark, versions, commit):
    df = spark.createDataFrame(batch("c", 0, 4).to_pandas()).union(spark.createDataFrame(batch("b", 10, 2).to_pandas()))
    files = write_parquet_files(df.repartition(3), versions.table_uri("t"), ["source"])
    assert sum(f.num_records for f in files) == 6
    assert {f.partition_values["source"] for f in files} == {"b", "c"}
    schema = to_arrow_schema(df.schema)
    version = versions.commit_files("t", files, schema=schema, commit=commit, partition_by=["source"])
    assert version == 3 and versions.read("t").num_rows == 2 + 3 + 6
    assert versions.commit_files("t", files, schema=schema, commit=commit, partition_by=["source"]) == 3
    assert versions.version("t") == 3 and versions.read("t").num_rows == 11
    spark_rows, _ = read_snapshot(spark, versions, "t", 3)
    assert as_rows(spark_rows) == sorted(tuple(r.values()) for r in versions.read("t", 3).to_pylist())


def test_retried_commits_change_nothing(spark, versions, commit):
    def files_for(source, start, count):
        df = spark.createDataFrame(batch(source, start, count).to_pandas())
        return write_parquet_files(df, versions.table_uri("t"), ["source"])

    schema = SCHEMA
    replacement = files_for("a", 200, 3)
    replaced = versions.commit_files(
        "t", replacement, schema=schema, commit=commit, partition_by=["source"], replace_partitions={"source": "a"}
    )
    again = versions.commit_files(
        "t", replacement, schema=schema, commit=commit, partition_by=["source"], replace_partitions={"source": "a"}
    )
    assert again == replaced and sorted(versions.read("t").column("k").to_pylist())[:3] == ["a-200", "a-201", "a-202"]
    assert versions.read("t").num_rows == 3 + 3

    extra = files_for("b", 300, 2)
    first = versions.commit_files(
        "t", extra, schema=schema, commit=commit, partition_by=["source"], app_id="j", app_version=0
    )
    assert versions.commit_files("t", extra, schema=schema, commit=commit, app_id="j", app_version=0) == first
    assert versions.read("t").num_rows == 3 + 3 + 2

    with pytest.raises(DeltaStoreError, match="outside the replaced partition"):
        versions.commit_files(
            "t", files_for("b", 400, 1), schema=schema, commit=commit, replace_partitions={"source": "a"}
        )


def test_write_to_delta_creates_replaces_and_is_idempotent_per_application_transaction(spark, store, commit):
    df = spark.createDataFrame(batch("a", 0, 3).to_pandas()).union(spark.createDataFrame(batch("b", 0, 2).to_pandas()))
    assert write_to_delta(df, store, "w", commit=commit, partition_by=["source"], app_id="job-1", app_version=0) == 0
    assert write_to_delta(df, store, "w", commit=commit, partition_by=["source"], app_id="job-1", app_version=0) == 0
    assert store.read("w").num_rows == 5
    replacement = spark.createDataFrame(batch("a", 50, 1).to_pandas())
    version = write_to_delta(
        replacement, store, "w", commit=commit, partition_by=["source"], replace_partitions={"source": "a"}
    )
    assert version == 1
    assert sorted(store.read("w").column("k").to_pylist()) == ["a-50", "b-0", "b-1"]
    assert store.history("w", 1)[0]["cptdata.run_id"] == "run-1"


def test_spark_aggregate_equals_a_plain_python_reference(spark, versions):
    df, _ = read_snapshot(spark, versions, "t", 1)
    by_spark = {
        r["source"]: (r["rows"], r["total"])
        for r in df.groupBy("source").agg(F.count("*").alias("rows"), F.sum("n").alias("total")).collect()
    }
    reference: dict[str, tuple[int, int]] = {}
    for row in versions.read("t", 1).to_pylist():
        rows, total = reference.get(row["source"], (0, 0))
        reference[row["source"]] = (rows + 1, total + row["n"])
    assert by_spark == reference == {"a": (5, 10), "b": (3, 3)}
