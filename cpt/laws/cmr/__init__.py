"""Paper B: the critical mixture ratio (Gu et al., arXiv 2407.17467; docs/science.md §3, §6).

- ``forms``: the curve forms (loss against ratio, domain and general trajectories, the CMR law);
- ``fits``: least-squares fits of those forms;
- ``critical``: ``T0`` (the last +→− crossing of ∂F/∂T), the tolerance and feasible sets;
- ``analysis``: the whole analysis from pilot trajectories, with serially correlated bootstrap intervals;
- ``answer``: the one CMR answer the asset, the CLI and the served model give, with its basis;
- ``heldout``: how well the trajectory forms extrapolate their own later checkpoints.
"""
