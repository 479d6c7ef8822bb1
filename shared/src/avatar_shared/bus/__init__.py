"""The one place that talks to NATS (see :mod:`.client`), and its parts:

- :mod:`.client`: :class:`Bus`, the connection; provisioning, publishing, consuming.
- :mod:`.processing`: handling one delivered message (decode, trace, settle).
- :mod:`.feed`: a pull consumer's messages as they are stored.
- :mod:`.kv`: key-value buckets.
- :mod:`.objects`: object stores (values larger than a message).
- :mod:`.streams`: the streams this project declares.
"""

from avatar_shared.bus.client import MSG_ID_HEADER, Bus, BusAuthError, check_credentials
from avatar_shared.bus.feed import Delivered, PullFeed
from avatar_shared.bus.kv import Bucket
from avatar_shared.bus.objects import ObjectCorrupt, Objects, ObjectTooLarge, StoredObject
from avatar_shared.bus.processing import (
    NAK_DELAY_SECONDS,
    Delivery,
    EventProcessor,
    Handler,
    Processed,
)
from avatar_shared.bus.streams import StreamSpec, events_stream

__all__ = [
    "MSG_ID_HEADER",
    "NAK_DELAY_SECONDS",
    "Bucket",
    "Bus",
    "BusAuthError",
    "Delivered",
    "Delivery",
    "EventProcessor",
    "Handler",
    "ObjectCorrupt",
    "ObjectTooLarge",
    "Objects",
    "Processed",
    "PullFeed",
    "StoredObject",
    "StreamSpec",
    "check_credentials",
    "events_stream",
]
