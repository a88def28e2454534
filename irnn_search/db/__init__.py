"""The experiment database (ours): launches, studies, workers, trial runs, final evaluations.

SQLAlchemy 2 models in :mod:`~irnn_search.db.models`, Alembic migrations driven from
:mod:`~irnn_search.db.migrate`, the one way to open a session in :mod:`~irnn_search.db.session`,
and keyword-only repository functions for the service layer in :mod:`~irnn_search.db.repo`.
Only this package (and ``migrations/``) imports SQLAlchemy or Alembic; it imports neither torch,
Optuna nor MLflow.
"""

from irnn_search.db.session import DatabaseError, dispose, make_engine, session_scope

__all__ = ["DatabaseError", "dispose", "make_engine", "session_scope"]
