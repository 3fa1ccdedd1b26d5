"""Paper A: the perplexity-aware data scaling law (Liu et al., arXiv 2512.21515; docs/science.md §2, §6).

- ``loglinear``: the fitting core shared by every law of the form ``L = E + exp(X·c)`` (grid over E, least squares,
  L-BFGS-B on a Huber loss of log residuals; leave-one-group-out error; group bootstrap);
- ``law``: the perplexity-aware law ``L(μ, σ, D)``;
- ``size_law``: the null baseline ``L = E + B/D^α`` the landscape law must beat;
- ``region``: the (μ, σ) a subset of the domain pool can reach;
- ``optimum``: the optimal landscape over that region, its bootstrap spread and near-optimal set;
- ``answer``: the target landscape a user acts on, with its basis and the baselines it beat.
"""
