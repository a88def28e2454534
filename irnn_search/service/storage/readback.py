"""The writes that are not safe to repeat, and how each is recognised in the database after its
connection was lost (the server may have committed it before the reply was lost).

Each write comes with a ``landed`` read for ``ResilientRDBStorage._write_once``: the write's
answer when it was committed, ``NOT_LANDED`` when it was not (then it is made again). Creations
and claims carry a random token in the same transaction, so that the read finds this process's
write and not another process's.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models as _rdb_models  # private, like _CachedStorage: pinned optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from irnn_search.service.storage.heartbeat import write_locked

#: system attr of every trial a ``ResilientRDBStorage`` creates: a random token that finds the
#: trial again when the connection was lost during its insert
CREATE_TOKEN = "irnn_search:create_token"
#: system attr a claim (WAITING -> RUNNING) writes with the state, to know it again likewise
CLAIM_TOKEN = "irnn_search:claim_token"
#: study system attr of every study a ``ResilientRDBStorage`` creates, for the same reason
STUDY_TOKEN = "irnn_search:create_token"
#: ``landed()`` of ``ResilientRDBStorage._write_once``: the write was not committed
NOT_LANDED = object()


# -- studies ------------------------------------------------------------------------------------
def create_study(storage: RDBStorage, directions: Sequence[StudyDirection], name: str | None, token: str) -> int:
    """Optuna's ``create_new_study``, also writing ``token`` as the study's ``STUDY_TOKEN`` in the
    same transaction.

    Raises:
        optuna.exceptions.DuplicatedStudyError: a study of that name exists.
    """
    from optuna.storages._rdb.storage import _create_scoped_session  # private: pinned optuna
    from sqlalchemy import exc as sa_exc

    m = _rdb_models
    try:
        with _create_scoped_session(storage.scoped_session) as session:
            if name is None:
                name = RDBStorage._create_unique_study_name(session)
            study = m.StudyModel(
                study_name=name,
                directions=[m.StudyDirectionModel(objective=i, direction=d) for i, d in enumerate(directions)],
            )
            session.add(study)
            session.add(m.StudySystemAttributeModel(study=study, key=STUDY_TOKEN, value_json=json.dumps(token)))
    except sa_exc.IntegrityError:
        raise optuna.exceptions.DuplicatedStudyError(f"a study named {name!r} already exists") from None
    # the line Optuna's own create_new_study logs, on Optuna's logger
    optuna.logging.get_logger("optuna.storages._rdb.storage").info(f"A new study created in RDB with name: {name}")
    return int(RDBStorage.get_study_id_from_name(storage, name))


def study_created(storage: RDBStorage, token: str) -> Any:
    """The id of the study created with ``token``, or ``NOT_LANDED``."""
    from sqlalchemy import select

    attr = _rdb_models.StudySystemAttributeModel
    query = select(attr.study_id).where(attr.key == STUDY_TOKEN, attr.value_json == json.dumps(token))
    with storage.engine.connect() as connection:
        found = connection.execute(query).scalar()
    return NOT_LANDED if found is None else int(found)


def study_gone(storage: RDBStorage, study_id: int) -> Any:
    """After a deletion of ``study_id`` was lost: None (done) when the study is gone, whoever
    deleted it, else ``NOT_LANDED``."""
    from sqlalchemy import select

    study = _rdb_models.StudyModel
    with storage.engine.connect() as connection:
        found = connection.execute(select(study.study_id).where(study.study_id == study_id)).scalar()
    return None if found is None else NOT_LANDED


# -- trials -------------------------------------------------------------------------------------
def with_token(template: FrozenTrial | None) -> FrozenTrial:
    """A copy of ``template`` (a blank RUNNING trial started now for None, as Optuna makes for
    ``ask``) with a fresh ``CREATE_TOKEN``."""
    from datetime import datetime

    if template is None:
        out = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
    else:
        out = copy.deepcopy(template)
    out.system_attrs[CREATE_TOKEN] = uuid.uuid4().hex
    return out


def trial_created(storage: RDBStorage, study_id: int, token: str) -> Any:
    """The trial of ``study_id`` created with ``token``, or ``NOT_LANDED``."""
    from sqlalchemy import select

    t, attr = _rdb_models.TrialModel, _rdb_models.TrialSystemAttributeModel
    query = (
        select(t.trial_id)
        .join(attr, attr.trial_id == t.trial_id)
        .where(t.study_id == study_id, attr.key == CREATE_TOKEN, attr.value_json == json.dumps(token))
    )
    with storage.engine.connect() as connection:
        found = connection.execute(query).scalar()
    return NOT_LANDED if found is None else RDBStorage.get_trial(storage, int(found))


def claim(storage: RDBStorage, trial_id: int, token: str) -> bool:
    """Optuna's WAITING -> RUNNING (``set_trial_state_values``), also writing ``token`` as the
    trial's ``CLAIM_TOKEN`` in the same transaction."""
    from datetime import datetime

    from optuna.storages._rdb.storage import _create_scoped_session  # private: pinned optuna
    from sqlalchemy import exc as sa_exc

    try:
        with write_locked(storage), _create_scoped_session(storage.scoped_session) as session:
            trial = _rdb_models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            current: TrialState = trial.state  # type: ignore[assignment]  # Optuna's models are untyped Columns
            storage.check_trial_is_updatable(trial_id, current)
            if current != TrialState.WAITING:
                return False
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
            storage._set_trial_attr_without_commit(
                session, _rdb_models.TrialSystemAttributeModel, trial_id, CLAIM_TOKEN, token
            )
    except sa_exc.IntegrityError:
        return False
    return True


def claimed(storage: RDBStorage, trial_id: int, token: str) -> Any:
    """After a claim of ``trial_id`` was lost: True when the trial holds ``token`` (this claim was
    committed), ``NOT_LANDED`` while it waits, else False (another process took it)."""
    trial = RDBStorage.get_trial(storage, trial_id)
    if trial.system_attrs.get(CLAIM_TOKEN) == token:
        return True
    return NOT_LANDED if trial.state == TrialState.WAITING else False


def state_landed(storage: RDBStorage, trial_id: int, state: TrialState) -> Any:
    """After a write of finished ``state`` to ``trial_id`` was lost: True when the trial is in
    ``state`` (the write was committed), ``NOT_LANDED`` when it is unchanged,
    ``UpdateFinishedTrialError`` when another process finished it otherwise."""
    current = RDBStorage.get_trial(storage, trial_id).state
    if current == state:
        return True
    storage.check_trial_is_updatable(trial_id, current)  # finished otherwise: Optuna's error
    return NOT_LANDED
