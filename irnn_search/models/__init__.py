"""Recurrent model families (torch only): built-in ones by name, plus those other packages register.

``MODELS`` maps a built-in family name to its class; ``model_names()`` adds the families installed
packages declare under the ``irnn_search.models`` entry point group (see ``irnn_search.plugins``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from irnn_search import plugins
from irnn_search.models.asrnn import ASRNN
from irnn_search.models.base import ModelConfig, ModelError, ParamGroup, RecurrentModel, State
from irnn_search.models.eurnn import EURNN
from irnn_search.models.exprnn import CayleyRNN, DTriv, ExpRNN
from irnn_search.models.irnn import IRNN
from irnn_search.models.lstm import LSTM
from irnn_search.models.nnrnn import NNRNN
from irnn_search.models.rnn import TanhRNN
from irnn_search.models.rnn_orth import RNNOrth
from irnn_search.models.scornn import ScoRNN
from irnn_search.options import OptionError, build_config

MODELS: dict[str, type[RecurrentModel]] = {
    "irnn": IRNN,
    "rnn": TanhRNN,
    "lstm": LSTM,
    "rnn-orth": RNNOrth,
    "exprnn": ExpRNN,
    "dtriv": DTriv,
    "cayley": CayleyRNN,
    "scornn": ScoRNN,
    "nnrnn": NNRNN,
    "asrnn": ASRNN,
    "eurnn": EURNN,
}


def model_names() -> tuple[str, ...]:
    """Every family name: the built-in ones, then those of installed plugins."""
    return (*MODELS, *plugins.plugins(plugins.MODELS_GROUP, MODELS))


def model_class(name: str) -> type[RecurrentModel]:
    """The class registered under ``name``; an unknown name lists the valid ones.

    A plugin's class is imported here; one that fails to import, is not a ``RecurrentModel``, or
    whose ``family`` differs from its entry point's name raises ``ModelError`` naming the
    distribution.
    """
    if name in MODELS:
        return MODELS[name]
    return plugins.load_class(  # type: ignore[no-any-return]
        plugins.MODELS_GROUP,
        MODELS,
        name,
        base=RecurrentModel,
        base_path="irnn_search.models.RecurrentModel",
        attr="family",
        error=ModelError,
        valid=model_names(),
    )


def build_model(
    name: str,
    options: Mapping[str, Any] | None,
    *,
    input_size: int,
    output_size: int,
    vocab_size: int | None = None,
) -> RecurrentModel:
    """Instantiate a family with user options for a task's input/output sizes (and vocabulary)."""
    cls = model_class(name)
    try:
        config = build_config(cls.config_cls, options or {}, f"model {name!r}")
    except OptionError as exc:
        raise ModelError(str(exc)) from None
    return cls(config, input_size=input_size, output_size=output_size, vocab_size=vocab_size)


__all__ = [
    "MODELS",
    "ModelConfig",
    "ModelError",
    "ParamGroup",
    "RecurrentModel",
    "State",
    "build_model",
    "model_class",
    "model_names",
]
