"""The consumer's public import, stable since the first release (README, docs/consumers.md):

    from segstream.pipeline.consumer import Subscriber, decode_mask, entry_kind

The code lives with the rest of the wire format in pipeline/wire/ (consumer.py, entries.py); this
module only keeps the documented path working for programs written against it.
"""

from segstream.pipeline.wire.consumer import Subscriber, SubscriberError
from segstream.pipeline.wire.entries import decode_mask, entry_kind

__all__ = ["Subscriber", "SubscriberError", "decode_mask", "entry_kind"]
