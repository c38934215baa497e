"""Why a reader's position no longer continues where it was: the reasons a subscriber is told
(:class:`bridge.kafka.hub.ResettableSubscriber`), the label of ``edgebridge_stream_resets_total``.

Their own module because both the hub and the catch-up readers it imports declare them.
"""

from __future__ import annotations

RESET = "reset"  # a new incarnation: the topic was recreated or the broker replaced
TRUNCATED = "truncated"  # retention deleted records the reader had not read yet
DELETED = "deleted"  # the topic is gone; the feed ends

# What a subscriber reads after a reset or a truncation (a route's ``after_reset``): what is
# available from its start (nothing is skipped without the declared signal), or only what is
# produced after it (a dashboard that wants the present, not a replay of the new incarnation).
FROM_START = "earliest"
LIVE = "live"
AFTER_RESET = (FROM_START, LIVE)
