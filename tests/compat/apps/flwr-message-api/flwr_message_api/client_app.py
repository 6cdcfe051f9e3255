"""Partition 0 answers with content, partition 1 with an error it chose."""

import os
from collections.abc import Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

app = ClientApp()
setups: list[int] = []


@app.lifespan()
def lifespan(context: Context) -> Iterator[None]:
    setups.append(os.getpid())
    yield


@app.query()
def query(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    if partition == 1:
        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION), reply_to=msg)
    arrays = msg.content["arrays"]
    big = arrays["big"]
    config = ConfigRecord(
        {
            "dtypes": [arrays["w"].dtype, big.dtype],
            "big-is-big": big.numpy().dtype == np.dtype(">f4"),
            "setups": len(setups),
            "group": msg.metadata.group_id,
        }
    )
    out = ArrayRecord({"echo": Array(big.numpy())})
    return msg.create_reply(RecordDict({"config": config, "arrays": out}))
