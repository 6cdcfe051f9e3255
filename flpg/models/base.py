"""Shared metadata, naming convention and enum types of the schema.

The enum types are declared from the StrEnums of `flpg.states` (labels in their
order), so the schema and the code share one list of states. CHECK constraints and
index predicates are SQL and spell labels as literals; PostgreSQL checks each one
against its enum type when it creates them.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import MetaData
from sqlalchemy.dialects.postgresql import ENUM

from flpg.states import LogStream, MessageState, NodeStatus, RunStatus

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(states: type[StrEnum], name: str) -> ENUM:
    """The PostgreSQL enum type `name` with the labels of `states`, in their order."""
    return ENUM(*[s.value for s in states], name=name, metadata=metadata)


NODE_STATUS = _enum(NodeStatus, "node_status")
"""See `flpg.states.NodeStatus`."""

RUN_STATUS = _enum(RunStatus, "run_status")
"""See `flpg.states.RunStatus`."""

MESSAGE_STATE = _enum(MessageState, "message_state")
"""See `flpg.states.MessageState`."""

LOG_STREAM = _enum(LogStream, "log_stream")
"""See `flpg.states.LogStream`."""
