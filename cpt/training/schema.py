"""The data contract of the pilot tables: one row per evaluation point of one pilot run.

``pilots/regime_runs`` and ``pilots/mixture_runs`` share it; each is partitioned by ``partition`` (the Dagster
partition key), so re-running a partition replaces exactly its rows.
"""

from __future__ import annotations

import pyarrow as pa

PILOT_POINTS_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.string()),  # Dagster partition key, e.g. "window-c0.50-w0.20|64000" or "1/8"
        pa.field("regime", pa.string()),  # regime name ("mixture" for mixture runs)
        pa.field("mix_ratio", pa.float64()),  # R = domain tokens / all tokens trained on
        pa.field("size_tokens", pa.int64()),  # D (regime runs) or T_max (mixture runs): the token budget
        pa.field("train_chunks", pa.int64()),  # distinct domain chunks in the training subset
        pa.field("mu", pa.float64()),  # mean chunk PPL of the domain chunks trained on
        pa.field("sigma", pa.float64()),  # population std of their chunk PPL
        pa.field("log_mu", pa.float64()),  # the same in log-PPL
        pa.field("log_sigma", pa.float64()),
        pa.field("step", pa.int64()),
        pa.field("tokens", pa.int64()),  # T: tokens trained on at this point
        pa.field("domain_tokens", pa.int64()),
        pa.field("general_tokens", pa.int64()),
        pa.field("domain_loss", pa.float64()),  # mean NLL per token on the held-out domain chunks
        pa.field("general_loss", pa.float64()),  # ... on the held-out general chunks
        pa.field("train_loss", pa.float64()),
        pa.field("learning_rate", pa.float64()),
        pa.field("is_final", pa.bool_()),
        pa.field("model_revision", pa.string()),
        pa.field("mlflow_run_id", pa.string()),
        pa.field("dagster_run_id", pa.string()),
        pa.field("config_hash", pa.string()),  # hash of the training config, the eval set and its size
        pa.field("scores_version", pa.int64()),  # the scores version the chunks were drawn from (the landscape's)
        pa.field("eval_set", pa.string()),  # hash of the held-out chunk ids: every pilot must share it
        # Per-chunk losses of the held-out sets at this point (mean NLL per predicted token of each chunk, in the
        # eval set's fixed order) and the chunks' predicted-token counts: the law fits aggregate them as configured
        # (token mean, trimmed mean, median), so a few outlier chunks cannot decide an answer unnoticed.
        pa.field("domain_chunk_losses", pa.list_(pa.float64())),
        pa.field("general_chunk_losses", pa.list_(pa.float64())),
        pa.field("domain_chunk_tokens", pa.list_(pa.int64())),
        pa.field("general_chunk_tokens", pa.list_(pa.int64())),
        pa.field("domain_eval_sources", pa.list_(pa.string())),  # sources the held-out domain chunks come from
        pa.field("general_eval_sources", pa.list_(pa.string())),
    ]
)

# ``pilots/followup_regimes``: one row per follow-up regime (DOS toward a point at or around the law's optimum); its
# ``name`` is the pilots/followup_runs partition that trains on it; a round's rows are replaced together.
FOLLOWUP_REGIMES_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string()),  # f<round>-<label>
        pa.field("round", pa.int64()),
        pa.field("label", pa.string()),  # opt | lo | hi
        pa.field("target_mu", pa.float64()),  # the DOS target, in the fit's terms
        pa.field("target_sigma", pa.float64()),
        pa.field("ppl_space", pa.string()),
        pa.field("sigma_kind", pa.string()),
        pa.field("mu", pa.float64()),  # what DOS reached, in the fit's terms
        pa.field("sigma", pa.float64()),
        pa.field("size_tokens", pa.int64()),  # D its pilot trains on (a prefix of the DOS order)
        pa.field("tokens", pa.int64()),  # tokens of the whole DOS subset
        pa.field("chunk_ids", pa.list_(pa.string())),  # in DOS step order
        pa.field("reason", pa.string()),  # why the round was needed
        pa.field("fit_key", pa.string()),
        pa.field("fit_mlflow_run_id", pa.string()),
        pa.field("scores_version", pa.int64()),
        pa.field("model_revision", pa.string()),
        pa.field("policy_hash", pa.string()),
    ]
)
