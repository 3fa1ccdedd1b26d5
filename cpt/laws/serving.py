"""The fitted laws as MLflow pyfunc models: served from the registry, they predict from a dataframe.

- ``PplLawModel``: columns ``mu``, ``sigma``, ``D`` (tokens) → ``loss``, the domain test loss the law predicts. μ and σ
  are in the fit's own terms (its options, in the fit JSON and the MLflow params: raw or log PPL; σ as standard
  deviation or variance), the defaults being raw PPL and standard deviation.
- ``CmrLawModel``: column ``tokens`` (a CPT budget) → ``cmr``, the critical mixture ratio (domain share) the law
  predicts for it, clipped to [0, 1].

Each model carries its fit (the result JSON) as an artifact; the parameters are read from it when loaded. The
``cpt`` package travels with the model (``code_paths``), so a registry copy loads without this repository.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd

from cpt.laws.cmr import CmrLaw
from cpt.laws.ppl_law import PplLawParams


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
            law = json.load(f)["cmr_law"]
        self.law = CmrLaw(**law)

    def predict(self, context, model_input, params=None):
        if "tokens" not in model_input.columns:
            raise ValueError("the CMR law needs a column tokens (the CPT token budget)")
        tokens = model_input["tokens"].to_numpy(float)
        return pd.DataFrame({"cmr": np.clip(self.law.predict(tokens), 0.0, 1.0)})
