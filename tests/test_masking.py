"""The one masking rule: passwords in URLs and secret query parameters never reach a message."""

from __future__ import annotations

import pytest

from irnn_search.masking import mask_secrets


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("postgresql://u:my secret pw@host/db", "postgresql://u:***@host/db"),
        (
            "cannot connect to postgresql+psycopg://irnn:two words@db:5432/optuna: refused",
            "cannot connect to postgresql+psycopg://irnn:***@db:5432/optuna: refused",
        ),
        ("postgresql://u:p@ss w@rd@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:plain@host/db", "postgresql://u:***@host/db"),
        # no password: a port, then text with an "@" further on, is left as it is
        ("http://mlflow:5000/api failed; mail ops@lab.org", "http://mlflow:5000/api failed; mail ops@lab.org"),
        ("sqlite:////tmp/x/optuna.db", "sqlite:////tmp/x/optuna.db"),
    ],
)
def test_a_password_is_masked_even_with_spaces_and_nothing_else_is(raw: str, masked: str) -> None:
    assert mask_secrets(raw) == masked
