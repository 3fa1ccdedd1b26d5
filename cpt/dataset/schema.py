"""The data contracts of the dataset stage.

- ``dataset/domain_selection``: one row per chunk distance-to-optimum selection chose, in greedy step order. A prefix
  of the steps is itself the DOS selection at that smaller budget, so the mixture pilots (R·T_max domain tokens) and
  the dataset (R·T_target) both take prefixes of one selection.
- ``dataset/cpt_mixture``: one row per training chunk, in the order a trainer reads them, with why it is there and
  the versions it came from. Each build replaces the table: version N of the table is dataset build N.
"""

from __future__ import annotations

import pyarrow as pa

SELECTION_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),  # the greedy step that chose the chunk (0 first)
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),  # predicted tokens
        pa.field("ppl", pa.float64(), nullable=False),
        pa.field("cumulative_tokens", pa.int64(), nullable=False),  # tokens of steps 0 … step
        pa.field("objective", pa.float64(), nullable=False),  # J of steps 0 … step: distance to the target
        pa.field("basis", pa.string(), nullable=False),  # the landscape answer's basis the target came from
        pa.field("target_mu", pa.float64(), nullable=False),  # the target, in the fit's terms
        pa.field("target_sigma", pa.float64(), nullable=False),
        pa.field("ppl_space", pa.string(), nullable=False),  # raw | log: what μ, σ are statistics of
        pa.field("sigma_kind", pa.string(), nullable=False),  # std | var
        pa.field("scores_version", pa.int64(), nullable=False),
        pa.field("documents_version", pa.int64(), nullable=False),
        pa.field("model_revision", pa.string(), nullable=False),
        pa.field("policy_hash", pa.string(), nullable=False),
        pa.field("fit_key", pa.string(), nullable=False),  # the laws/ppl_law fit the target came from (its inputs)
        pa.field("fit_mlflow_run_id", pa.string(), nullable=False),  # ... and its MLflow run
    ]
)

DATASET_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),  # the order a trainer reads the chunks in (0 first)
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # domain | general
        pa.field("n_tokens", pa.int64(), nullable=False),  # predicted tokens
        pa.field("ppl", pa.float64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # in words: "dos step 12 …" or "replay draw 3 …"
        pa.field("dos_step", pa.int64(), nullable=True),  # domain rows: the greedy step that chose it
        pa.field("replay_draw", pa.int64(), nullable=True),  # general rows: its place in the seeded replay draw
        pa.field("scores_version", pa.int64(), nullable=False),
        pa.field("documents_version", pa.int64(), nullable=False),
        pa.field("selection_version", pa.int64(), nullable=False),
        pa.field("model_revision", pa.string(), nullable=False),
        pa.field("policy_hash", pa.string(), nullable=False),
    ]
)
