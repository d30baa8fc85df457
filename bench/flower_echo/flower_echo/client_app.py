"""ClientApp: send back exactly what arrived (no training)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def echo(msg: Message, context: Context) -> Message:
    """Reply with the received records unchanged."""
    return Message(content=msg.content, reply_to=msg)
