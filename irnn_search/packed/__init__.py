"""Packed trials: K trials of one study trained as ONE batched computation (torch only).

A 100-unit RNN leaves most of a CPU's vector units idle; stacking K members' parameters along a
leading trial axis and running one ``bmm`` per time step for all of them multiplies throughput
(``benchmarks/packed_speed.py``). Each member still gets exactly what
``irnn_search.train.train`` would give it alone: its own batches, hyperparameters (lr, lr_orth,
optimizer and its options, clip incl. off), divergence checks, evaluations, report hook and
checkpoints (``train()``'s format: a member checkpointed in a pack resumes alone with
``train()``, and the other way round). Tests check metrics and final parameters equal to a run
alone within 1e-5 in float32 (1e-10 in float64 for trials whose float32 trajectories amplify
rounding), for every family.

Which members can be packed::

    from irnn_search.packed import packable, why_not_packable
    packable("irnn")                     # family level: every family of the zoo
    why_not_packable(run.model, run.task)  # None, or a sentence for the log: train it alone

Build members exactly as for ``train()`` (``irnn_search.run.prepare_run`` seeds and
initialises the model), then run them::

    from irnn_search.packed import Member, train_packed
    members = [
        Member(run.model, run.task, run.config, report=hook, checkpoint_dir=folder, name="trial 7", tag=trial)
        for run, hook, folder, trial in ...
    ]
    results = train_packed(members, stop=stop_event, refill=next_member, on_result=record, slots=8)

- ``refill()`` is called whenever fewer than ``slots`` members train; it returns a new ``Member``
  (fresh, or one resuming from its ``checkpoint_dir``) or None ("none for now"; asked again when
  the next member leaves). A member that leaves (completed, stopped, pruned, diverged) never
  disturbs the others.
- ``on_result(PackedResult)`` is called as each member leaves, before its slot is refilled.
- Each ``PackedResult`` has ``member`` (with your ``tag``), ``result`` (a ``TrainResult``: outcome,
  reason, history, best, train_time_s = this member's share of the device time) and ``error``:
  an exception the member's report hook raised (e.g. ``optuna.TrialPruned``) or a ``TrainError``
  that kept it from starting. Re-raise it in that trial's context; the other members carried on.
- ``stop`` set: every member saves ``last.pt`` and ends ``"interrupted"``.
- A pack step that runs out of device memory (before any update) splits the pack in two halves
  that retry the step, and packs of that shape are never filled past the half again; a member
  that does not fit alone leaves with ``error`` = ``torch.OutOfMemoryError``. Only the training
  step is covered: the time loop's buffers are what grows with K and sequence length; building a
  pack (stacked parameters, optimizer state) or evaluating it (no gradients) takes far less.
- After a member leaves, its ``model`` holds its final parameters (the last finite ones for a
  diverged member) and ``checkpoint_dir`` its ``last.pt`` / ``best.pt``: evaluate it, test it or
  resume it with the ordinary single-trial tools.

Packing rules: members with the same family, variant (nonlinearity) and parameter shapes share one
pack; different hidden sizes go to different packs (bucketing; measured against padding in
``benchmarks/README.md``), stepped one after another. Members with different optimizers share a
pack (one vectorised update per optimizer kind). What a family does beyond its parameters is
packed too: dtriv's rebases (its buffers are stacked and checkpointed per member), nnRNN's loss
penalty and its T group's weight decay, scoRNN's ±1 diagonal. Token tasks (PTB: embeddings, state
carried between batches) are not packed: ``add``/``train_packed`` raise ``PackError`` for them,
so check ``why_not_packable`` first.

Speed: every family runs a hand-written backward of its time loop
(``irnn_search.packed.scan``: the weight gradients in one matmul over all time steps; members
match a run alone to float rounding, 1e-5 in the tests); ``train_packed(..., fused_backward=False)``
or ``PackedTrainer(fused_backward=False)`` keeps autograd's step-by-step backward (bit for bit
``train()``'s on CPU, slower) for comparison.

``PackedTrainer`` is the incremental form (``add``, ``step``, ``interrupt``, ``active``) for a
caller that wants to drive the loop itself.
"""

from irnn_search.packed.families import FAMILIES
from irnn_search.packed.loop import Member, PackedResult, PackedTrainer, train_packed
from irnn_search.packed.model import PackedModel, packable, why_not_packable
from irnn_search.packed.optim import PackedOptimizer, PackError

__all__ = [
    "FAMILIES",
    "Member",
    "PackError",
    "PackedModel",
    "PackedOptimizer",
    "PackedResult",
    "PackedTrainer",
    "packable",
    "train_packed",
    "why_not_packable",
]
