"""The fitted laws as MLflow pyfunc models: served from the registry, they predict from a dataframe.

- ``PplLawModel``: columns ``mu``, ``sigma``, ``D`` (tokens) → ``loss``, the domain test loss the law predicts. μ and σ
  are in the fit's own terms (its options, in the fit JSON and the MLflow params: raw or log PPL; σ as standard
  deviation or variance), the defaults being raw PPL and standard deviation.
- ``CmrLawModel``: column ``tokens`` (a CPT budget) → the CMR answer at that budget, exactly as the ``laws/cmr``
  asset gives it (``cpt.laws.cmr.answer``): ``cmr`` (always inside the tolerance interval; NaN when no ratio is
  tolerable), ``basis`` (law | measured), ``extrapolated`` (beyond the pilots' budget), ``cmr_low``/``cmr_high``
  (the bootstrap interval).

Each model carries its fit (the result JSON) as an artifact; everything is read from it when loaded. The ``cpt``
package travels with the model (``code_paths``), so a registry copy loads without this repository. Serve the
promoted version: ``models:/cptdata-cmr-law@champion`` (the alias moves only when the fit's blocking gate passed).
"""

from __future__ import annotations

import json
import math

import mlflow.pyfunc
import pandas as pd

from cpt.laws.cmr.answer import CmrAnswerModel, answer_with_interval
from cpt.laws.ppl.law import PplLawParams


class PplLawModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        with open(context.artifacts["fit"]) as f:
            self.params = PplLawParams(**json.load(f)["fit"]["params"])

    def predict(self, context, model_input, params=None):
        missing = {"mu", "sigma", "D"} - set(model_input.columns)
        if missing:
            raise ValueError(f"the PPL law needs columns mu, sigma, D (tokens); missing {sorted(missing)}")
        loss = self.params.predict(
            model_input["mu"].to_numpy(float), model_input["sigma"].to_numpy(float), model_input["D"].to_numpy(float)
        )
        return pd.DataFrame({"loss": loss})


class CmrLawModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        with open(context.artifacts["fit"]) as f:
            fit = json.load(f)
        self.model = CmrAnswerModel.from_json(fit["answer_model"])
        self.draws = tuple(CmrAnswerModel.from_json(d) for d in fit["answer_draws"])
        self.level = float(fit["options"]["ci_level"])

    def predict(self, context, model_input, params=None):
        if "tokens" not in model_input.columns:
            raise ValueError("the CMR law needs a column tokens (the CPT token budget)")
        rows = []
        for tokens in model_input["tokens"].to_numpy(float):
            a = answer_with_interval(self.model, self.draws, float(tokens), self.level)
            low, high = a.interval if a.interval is not None else (math.nan, math.nan)
            rows.append(
                {
                    "cmr": math.nan if a.ratio is None else a.ratio,
                    "basis": a.basis,
                    "extrapolated": a.extrapolated,
                    "cmr_low": low,
                    "cmr_high": high,
                }
            )
        return pd.DataFrame(rows)
