"""Why a reader's position no longer continues where it was: the reasons a subscriber is told
(:class:`bridge.kafka.hub.ResettableSubscriber`), the label of ``edgebridge_stream_resets_total``.

Their own module because both the hub and the catch-up readers it imports declare them.
"""

from __future__ import annotations

RESET = "reset"  # a new incarnation: the topic was recreated or the broker replaced
TRUNCATED = "truncated"  # retention deleted records the reader had not read yet
DELETED = "deleted"  # the topic is gone; the feed ends
