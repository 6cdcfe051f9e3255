"""A ClientApp that would echo its arrays."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    return Message(content=msg.content, reply_to=msg)
