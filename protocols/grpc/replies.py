"""Request-reply for gRPC: a reply record -> ``edgebridge.v1.Reply``.

The same contract as the HTTP front-end's (bridge/model/request_reply.py), waited for through the
same follower (bridge/kafka/replies.py): the answer is the first record on the reply topic with
the request's ``correlation-id``.
"""

from __future__ import annotations

from bridge.model.message import Message
from bridge.model.request_reply import EXCHANGE_HEADERS, reply_status
from protocols.grpc import edgebridge_pb2 as pb


def reply_message(record: Message) -> pb.Reply:
    headers = {}
    for name, value in record.headers:
        if name.lower() in EXCHANGE_HEADERS or name.startswith(":"):
            continue
        headers[name] = value.decode("utf-8", "replace")
    return pb.Reply(value=record.value or b"", headers=headers, status=reply_status(record))
