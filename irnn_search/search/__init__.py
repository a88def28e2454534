"""The search service's building blocks (optuna only; no mlflow, no sqlalchemy).

- ``spec``: study specs (``studies/*.toml``) validated into a frozen, hashable dataclass tree;
- ``space``: a spec's search space in Optuna terms (suggestions, sampler, pruner);
- ``literature``: published settings per (task, model) and the warm start that enqueues them.
"""
