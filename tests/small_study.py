"""The small study that the worker-pool tests and the chaos soak both run: IRNN (and for the soak a
tanh RNN) on a short adding task, trials of a few seconds, no pruner, so what is measured is the
workers, not the search."""

from __future__ import annotations

_SPEC = """
[study]
description = "{description}"
task = "adding"
task_options = {{ T = 20, val_size = 64, test_size = 64 }}
steps = {steps}
report_every = {report_every}
batch_size = 8
seeds = [0]
pruner = {{ name = "none" }}
budget = {{ trials = {trials} }}

[models.irnn]
hidden_size = 8
optimizer = "adam"
lr = {{ low = 1e-3, high = 1e-2, log = true }}
clip = 1
identity_scale = {{ low = 0.1, high = 1.0 }}
"""

#: a second model, for what needs two studies at once (the chaos soak)
_RNN = """
[models.rnn]
hidden_size = 8
optimizer = "adam"
lr = { low = 1e-3, high = 1e-2, log = true }
clip = 1
"""


def small_study(*, description: str, steps: int, report_every: int, trials: int, rnn: bool = False) -> str:
    """The study file's text (TOML): IRNN, and with ``rnn`` a tanh RNN study beside it."""
    text = _SPEC.format(description=description, steps=steps, report_every=report_every, trials=trials)
    return text + _RNN if rnn else text
