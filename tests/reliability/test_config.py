"""The whole configuration is validated in one place (``orchestration.settings``, called by ``load_profile``) before
any definition is built: every bad setting is a one-line error naming it (variable, or source and key) and its value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestration.definitions import build_definitions
from orchestration.profiles import load_profile
from orchestration.settings import ConfigError, load_settings


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CPTDATA_HOME": str(tmp_path / "home"), **extra}


def error_of(environment: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as err:
        load_profile(environment)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    return message


@pytest.mark.parametrize("value", ["abc", "nan", "NaN", "-1", "inf", "-inf", "5", "1.0000001", ""])
def test_max_reject_rate_must_be_a_finite_share(tmp_path, value):
    message = error_of(env(tmp_path, CPTDATA_MAX_REJECT_RATE=value))
    assert message.startswith(f"CPTDATA_MAX_REJECT_RATE={value!r}: ")


@pytest.mark.parametrize(("value", "rate"), [("0", 0.0), ("1", 1.0), ("0.05", 0.05), (" 0.2 ", 0.2)])
def test_valid_reject_rates_reach_the_gate(tmp_path, value, rate):
    assert load_profile(env(tmp_path, CPTDATA_MAX_REJECT_RATE=value)).catalog.max_reject_rate == rate


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "nan", "inf", "a quarter"])
def test_sample_fraction_must_be_a_share_above_zero(tmp_path, value):
    assert error_of(env(tmp_path, CPTDATA_SAMPLE_FRACTION=value)).startswith(f"CPTDATA_SAMPLE_FRACTION={value!r}: ")


@pytest.mark.parametrize(("value", "fraction"), [(None, 0.15), ("1", 1.0), ("0.5", 0.5)])
def test_sample_fraction_reaches_every_sample_source(tmp_path, value, fraction):
    extra = {} if value is None else {"CPTDATA_SAMPLE_FRACTION": value}
    sources = load_profile(env(tmp_path, **extra)).catalog.sources
    assert len(sources) == 5 and {s.sample_fraction for s in sources} == {fraction}


CLUSTER = {"CPTDATA_PROFILE": "cluster", "CPTDATA_DELTA_ROOT": "s3://b/c", "CPTDATA_BASE_MODEL": "/models/m"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"CPTDATA_PROFILE": "laptop"}, "CPTDATA_PROFILE='laptop': is not a profile; choose one of quickstart, "),
        ({"CPTDATA_PRETRAIN_TOKENS": "-5"}, "CPTDATA_PRETRAIN_TOKENS='-5': input should be greater than or equal"),
        ({"CPTDATA_PRETRAIN_TOKENS": "1e6"}, "CPTDATA_PRETRAIN_TOKENS='1e6': input should be a valid integer"),
        ({"CPTDATA_SPARK_MASTER": "locl[2]"}, "CPTDATA_SPARK_MASTER='locl[2]': is not a Spark master URL"),
        ({"CPTDATA_SPARK_MASTER": "local[0]"}, "CPTDATA_SPARK_MASTER='local[0]': is not a Spark master URL"),
        ({**CLUSTER, "CPTDATA_SPARK_SHUFFLE_PARTITIONS": "0"}, "CPTDATA_SPARK_SHUFFLE_PARTITIONS='0': input should"),
        ({**CLUSTER, "CPTDATA_SPARK_DRIVER_MEMORY": "lots"}, "CPTDATA_SPARK_DRIVER_MEMORY='lots': string should"),
        ({**CLUSTER, "CPTDATA_SPARK_TASK_GPUS": "nan"}, "CPTDATA_SPARK_TASK_GPUS='nan': "),
        (
            {**CLUSTER, "CPTDATA_SPARK_EXECUTOR_GPUS": "1", "CPTDATA_SPARK_TASK_GPUS": "2"},
            "CPTDATA_SPARK_TASK_GPUS=2 must be above 0 and at most CPTDATA_SPARK_EXECUTOR_GPUS=1",
        ),
        ({**CLUSTER, "CPTDATA_SPARK_TASK_GPUS": "1"}, "CPTDATA_SPARK_TASK_GPUS=1 needs CPTDATA_SPARK_EXECUTOR_GPUS"),
        ({"CPTDATA_BASE_MODEL_REVISION": "abc"}, "CPTDATA_BASE_MODEL_REVISION is set but CPTDATA_BASE_MODEL"),
        ({"CPTDATA_MLFLOW_UI": "localhost:5000"}, "CPTDATA_MLFLOW_UI='localhost:5000': is not an http(s) URL"),
        ({"CPTDATA_SOURCES": "/nowhere/sources.json"}, "CPTDATA_SOURCES='/nowhere/sources.json': is not a file"),
        ({"CPTDATA_LANDING": "   "}, "CPTDATA_LANDING='   ': is empty; unset it to use the default"),
    ],
)
def test_each_bad_setting_is_one_line_naming_it_and_its_value(tmp_path, extra, expected):
    assert error_of(env(tmp_path, **extra)).startswith(expected)


def test_home_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert error_of({"CPTDATA_HOME": str(tmp_path / "file")}).startswith(
        f"CPTDATA_HOME={str(tmp_path / 'file')!r}: is a file; it must be a folder"
    )


def sources_error(tmp_path: Path, items) -> str:
    path = tmp_path / "sources.json"
    path.write_text(items if isinstance(items, str) else json.dumps(items))
    message = error_of(env(tmp_path, CPTDATA_SOURCES=str(path)))
    assert message.startswith(f"CPTDATA_SOURCES={str(path)!r}: ")
    return message.split(": ", 1)[1]


def src(name: str, **kw) -> dict:
    return {"name": name, "path": f"/data/{name}.jsonl", "format": "jsonl", "role": "domain", **kw}


def test_duplicate_source_names_are_refused_not_last_wins(tmp_path):
    message = sources_error(tmp_path, [src("a"), src("b"), src("a", role="general")])
    assert message == "source name 'a' is declared twice (entries 1 and 3)"


def test_unknown_source_keys_are_refused_with_a_suggestion(tmp_path):
    message = sources_error(tmp_path, [src("a"), src("b", txt_field="body")])
    assert message.startswith("source 'b' (entry 2): unknown key 'txt_field' (did you mean 'text_field'? keys: name,")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (src("a", format="csv"), "source 'a' (entry 1): format='csv': input should be 'jsonl', 'jsonl.gz'"),
        (src("a", role="domian"), "source 'a' (entry 1): role='domian': input should be 'domain' or 'general'"),
        (src("a", split="test"), "source 'a' (entry 1): split='test': input should be 'by_group', 'train' or"),
        (src("a", eval_fraction=1.5), "source 'a' (entry 1): eval_fraction=1.5: input should be less than 1"),
        (src("a", eval_fraction=float("nan")), "source 'a' (entry 1): eval_fraction='nan': input should be a finite"),
        (src("a", allow_empty="maybe"), "source 'a' (entry 1): allow_empty='maybe': input should be a valid boolean"),
        ({"name": "a", "format": "jsonl", "role": "domain"}, "source 'a' (entry 1): path is missing"),
        (src("has space"), "source 'has space' (entry 1): source name 'has space': use letters, digits"),
        (src("x" * 250), f"source {'x' * 40!r}… (entry 1): source name 'xxxx"),  # refused before any work
        (["not", "an", "object"], "entry 1 must be an object"),
    ],
)
def test_each_bad_source_entry_names_the_source_and_key(tmp_path, entry, expected):
    assert sources_error(tmp_path, [entry]).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"name": "a",', "is not valid JSON (Expecting property name enclosed in double quotes at line 1"),
        ('{"name": "a"}', "must be a JSON list of source objects, not a JSON dict"),
    ],
)
def test_a_sources_file_that_is_not_a_json_list_is_refused(tmp_path, text, expected):
    assert sources_error(tmp_path, text).startswith(expected)


def test_several_problems_still_make_one_line(tmp_path):
    message = sources_error(tmp_path, [src("a", txt_field="t"), src("b", role="x"), src("b"), src("b"), src("b"), "z"])
    assert message.count("; ") == 3 and message.endswith("(and 2 more)")  # 6 problems: the first 4 are shown
    assert "source name 'b' is declared twice (entries 2 and 3)" in message


def test_a_valid_sources_file_reaches_the_catalog_with_allow_empty(tmp_path):
    path = tmp_path / "sources.json"
    path.write_text(
        json.dumps([src("a", split="eval", allow_empty=True), src("b", group_field="g", sample_fraction=0.1)])
    )
    profile = load_profile(env(tmp_path, CPTDATA_SOURCES=str(path), CPTDATA_SAMPLE_FRACTION="0.5"))
    specs = {s.name: s.spec() for s in profile.catalog.sources}
    assert (specs["a"].split.value, specs["a"].allow_empty, specs["a"].sample_fraction) == ("eval", True, 1.0)
    assert (specs["b"].group_field, specs["b"].allow_empty, specs["b"].sample_fraction) == ("g", False, 0.1)
    assert profile.warnings == (
        "CPTDATA_SAMPLE_FRACTION is only read for the sample corpora; set sample_fraction per source in "
        "CPTDATA_SOURCES instead",
    )


def test_definitions_are_never_built_from_a_bad_configuration(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("orchestration.definitions.dg.Definitions", lambda **kw: built.append(kw))
    with pytest.raises(ConfigError, match="CPTDATA_MAX_REJECT_RATE='inf'"):
        build_definitions(env(tmp_path, CPTDATA_MAX_REJECT_RATE="inf"))
    assert built == []


def test_unused_and_misspelt_settings_are_reported_as_warnings(tmp_path):
    settings = load_settings(env(tmp_path, CPTDATA_MAX_REJECT_RATES="0.5", CPTDATA_SPARK_EXECUTOR_GPUS="1"))
    assert settings.warnings == (
        "CPTDATA_MAX_REJECT_RATES is not a setting and is ignored (did you mean CPTDATA_MAX_REJECT_RATE?)",
        "CPTDATA_SPARK_EXECUTOR_GPUS is only read by the cluster profile and is ignored by quickstart",
    )
