"""A packed member's arithmetic does not depend on its pack: on CPU its reports and parameters are
the same, bit for bit, in a pack of one and beside other members. So ``irnn-search train --packed``
(a pack of one) retraces a trial that trained in a pack of any size, which is what makes the
report's reproduce line exact (``tests/service/test_rerun.py``)."""

from __future__ import annotations

import pytest
import torch

from irnn_search.models.orthogonal import raw_parameter
from irnn_search.packed import Member, train_packed
from irnn_search.packed.families import expm
from irnn_search.run import Run, execute
from tests.packed._trials import COMPARED, Spec
from tests.packed.test_equality import SPECS

FAMILIES = sorted({s.family for s in SPECS})


def _small_skew(member: Member) -> Member:
    """Shrink an orthogonal member's recurrent skew parameter so its 1-norm is below 3.01, where
    torch's matrix_exp picks its Taylor degree from the norm for a lone matrix."""
    with torch.no_grad():
        for module in member.model.modules():
            if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
                raw_parameter(module).mul_(0.01)
    return member


def _reports(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: h[k] for k in COMPARED if k in h} for h in history]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_member_trains_the_same_bit_for_bit_as_a_pack_of_one_and_beside_others(family: str) -> None:
    # The reproduce line's path (execute(packed=True), what `train --packed` runs) against the same
    # trial in a pack of four with other hyperparameters, seeds, evaluation steps and (dtriv)
    # rebase periods, so the member is also evaluated and rebased alone in its pack.
    target, *others = [s for s in SPECS if s.family == family]
    lr = target.config["lr"]
    period = (lambda k: {"K": k}) if family == "dtriv" else (lambda k: {})
    companions = [
        Spec(family, {**target.options, **period(3)}, {**target.config, "lr": 3 * lr}, seed=5),
        Spec(family, {**target.options, **period(4)}, {**target.config, "lr": lr / 2}, seed=7),
        *others,
        Spec(family, target.options, {**target.config, "lr": 2 * lr}, seed=9),
    ][:3]
    for shrink in (False, True) if family in ("exprnn", "dtriv", "nnrnn", "asrnn") else (False,):
        prep = _small_skew if shrink else (lambda m: m)
        alone = prep(target.member())
        result, _ = execute(Run(alone.task, alone.model, alone.config), packed=True)
        members = [prep(target.member()), *(prep(c.member(config={"eval_every": 6})) for c in companions)]
        (packed,) = [r for r in train_packed(members) if r.member is members[0]]
        assert _reports(packed.result.history) == _reports(result.history), (family, shrink)
        assert len(result.history) == 3 and result.outcome == packed.result.outcome
        for (name, p), q in zip(members[0].model.named_parameters(), alone.model.parameters(), strict=True):
            assert torch.equal(p, q), (family, shrink, name)
        for (name, b), c in zip(members[0].model.named_buffers(), alone.model.buffers(), strict=True):
            assert torch.equal(b, c), (family, shrink, name)


def test_expm_of_a_lone_matrix_equals_its_value_in_any_stack() -> None:
    torch.manual_seed(0)

    def skew(scale: float) -> torch.Tensor:
        a = torch.randn(16, 16) * scale
        return a - a.T

    for scale in (0.0, 1e-3, 0.05, 1.0):  # 1-norms from 0 to far above 3.01
        a = skew(scale)
        lone = expm(a[None])[0]
        for others in ([], [0.0], [1e-3, 1.0], [0.05] * 5):
            stack = torch.stack([a, *(skew(s) for s in others)])
            assert torch.equal(expm(stack)[0], lone), (scale, others)
    # torch alone differs for a small norm: this is what expm is for (if torch changes, drop expm).
    a = skew(1e-3)
    assert not torch.equal(torch.linalg.matrix_exp(a[None])[0], torch.linalg.matrix_exp(torch.stack([a, a]))[0])


def test_a_member_left_alone_in_its_pack_trains_as_in_company() -> None:
    # The other members finish after 10 of the target's 24 steps: the target spends the rest of its
    # run alone in its pack (beside its twin) and still ends bit for bit as in a pack of four.
    target, other = Spec("irnn", {"identity_scale": 0.5}, {"optimizer": "adam", "lr": 3e-3}), SPECS[0]
    lone = [target.member(), other.member(config={"steps": 10}), other.member(config={"steps": 10, "lr": 2e-3})]
    company = [target.member(), *(other.member(config={"lr": lr}) for lr in (1e-3, 2e-3, 5e-3))]
    ended = {}
    for name, members in (("lone", lone), ("company", company)):
        (res,) = [r for r in train_packed(members) if r.member is members[0]]
        ended[name] = (_reports(res.result.history), members[0].model)
    assert ended["lone"][0] == ended["company"][0] and len(ended["lone"][0]) == 3
    for p, q in zip(ended["lone"][1].parameters(), ended["company"][1].parameters(), strict=True):
        assert torch.equal(p, q)
