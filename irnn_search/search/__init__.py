"""The search service's building blocks (optuna only; no mlflow, no sqlalchemy).

- ``spec``: a study spec as a frozen, hashable dataclass tree (what is stored at launch);
- ``validate``: a spec file (``studies/*.toml``) validated into that tree; ``validate_model`` its
  model tables, checked against the real model and training configs;
- ``space``: a spec's search space in Optuna terms (suggestions, sampler, pruner);
- ``literature``: published settings per (task, model) and the warm start that enqueues them.
"""
