"""Who may do what on the bus: one NATS identity per service, least privilege.

Each service connects with its own NKey (``NATS_NKEY_SEED_FILE``: the seed, a secret;
the server knows only the public key) and may publish and subscribe to exactly what it
uses, JetStream API subjects included, and nothing else. This module is the one place
those permissions are written: the local and test servers' configuration is rendered
from it (:func:`server_config`), and ``make k8s-validate`` checks the NATS Helm values of
``deploy/k8s`` against it.

Each service provisions its own streams and buckets at start (create or update, never
delete or purge a stream), so a deployment needs no ordering between a provisioning job
and the services; a service cannot touch another's. The events stream
(``AVATAR_EVENTS``) is provisioned by the actions service, its consumer; the agent only
publishes into it and reads its own room's deliveries.

Replies (JetStream API answers, pull deliveries) come to a per-identity inbox prefix
(``_INBOX.<identity>``), so no service can read another's replies.

``python -m scripts.nats_keys`` makes seeds and prints public keys and server
configuration (docs/bus-security.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from avatar_shared.subjects import EVENTS_STREAM, PREFIX

#: The names the services use by default (their settings can change them; the
#: permissions follow the defaults, so a changed name needs a changed permission).
ACTIONS_WORK = "ACTIONS_WORK"
ACTIONS_BUCKETS = ("ACTIONS_ROOMS", "ACTIONS_LEASES")
BUNDLES_BUCKET = "AVATAR_BUNDLES"
SESSIONS_STREAM = "AVATAR_SESSIONS"
SESSIONS_PREFIX = "avatars.sessions.v1"
AUDIT_STREAM = "AVATAR_AUDIT"
AUDIT_PREFIX = "avatars.audit.v1"
#: The token service's consumers of the agents' session events, one per type.
TOKEN_CONSUMERS = {"token-started": "session_started", "token-ended": "session_ended"}


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox(identity: str) -> str:
    """The prefix of an identity's reply subjects."""
    return f"_INBOX.{identity}"


def _stream(name: str) -> tuple[str, ...]:
    """Provision one's own stream: look at it, create it, bring it to its configuration."""
    return tuple(f"$JS.API.STREAM.{op}.{name}" for op in ("INFO", "CREATE", "UPDATE"))


def _consumers(stream: str) -> tuple[str, ...]:
    """Consumers of one's own stream: create, look up, delete, pull, ack, flow control."""
    api = "$JS.API.CONSUMER"
    return (
        f"{api}.CREATE.{stream}",
        f"{api}.CREATE.{stream}.>",
        f"{api}.DURABLE.CREATE.{stream}.*",
        f"{api}.INFO.{stream}.*",
        f"{api}.DELETE.{stream}.*",
        f"{api}.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def _reads(stream: str) -> tuple[str, ...]:
    return (
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
    )


def _kv(bucket: str) -> tuple[str, ...]:
    stream = f"KV_{bucket}"
    return (*_stream(stream), *_consumers(stream), *_reads(stream), f"$KV.{bucket}.>")


def _object_store(bucket: str) -> tuple[str, ...]:
    stream = f"OBJ_{bucket}"
    # Replacing or deleting an object purges its old chunks (a filtered purge).
    purge = f"$JS.API.STREAM.PURGE.{stream}"
    return (*_stream(stream), *_consumers(stream), *_reads(stream), purge, f"$O.{bucket}.>")


IDENTITIES: dict[str, Permissions] = {
    "actions": Permissions(
        publish=(
            f"{PREFIX}.actions.>",  # decisions, and deliveries for the agent
            *_stream(EVENTS_STREAM),
            *_stream(ACTIONS_WORK),
            *_consumers(ACTIONS_WORK),
            *(subject for bucket in ACTIONS_BUCKETS for subject in _kv(bucket)),
        ),
        subscribe=(
            f"{inbox('actions')}.>",
            f"{PREFIX}.agent.delivery_done.*",
            f"{PREFIX}.*.*.*",  # the room inspector's live feed (ACTIONS_INSPECTOR)
        ),
    ),
    "agent": Permissions(
        publish=(
            f"{PREFIX}.agent.>",
            f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
            # Its room's deliveries (ACTIONS_DELIVERY=agent): consumers filtered to
            # deliveries only, pulled and acked; nothing else of the events stream.
            f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.*.{PREFIX}.actions.avatar_delivery.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.*",
            f"$JS.ACK.{EVENTS_STREAM}.>",
            # Whether a room's session has ended (a token used again: no second session),
            # and nothing else of the stored events.
            f"$JS.API.DIRECT.GET.{EVENTS_STREAM}.{PREFIX}.agent.session_ended.*",
        ),
        subscribe=(f"{inbox('agent')}.>",),
    ),
    "token": Permissions(
        publish=(
            f"{SESSIONS_PREFIX}.>",  # its session slots (quotas)
            *_stream(SESSIONS_STREAM),
            f"$JS.API.STREAM.PURGE.{SESSIONS_STREAM}",  # a session ended: its slot goes
            f"$JS.API.STREAM.MSG.GET.{SESSIONS_STREAM}",
            f"{AUDIT_PREFIX}.>",  # the audit trail, which it writes and never reads
            *_stream(AUDIT_STREAM),
            f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
            # The agents' session_started / session_ended, nothing else of the events
            # stream: each consumer's filter is part of the subject it is created on.
            *(
                f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.{name}.{PREFIX}.agent.{kind}.*"
                for name, kind in TOKEN_CONSUMERS.items()
            ),
            *(f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{name}" for name in TOKEN_CONSUMERS),
            *(f"$JS.ACK.{EVENTS_STREAM}.{name}.>" for name in TOKEN_CONSUMERS),
        ),
        subscribe=(f"{inbox('token')}.>",),
    ),
    "bundles": Permissions(
        publish=_object_store(BUNDLES_BUCKET),
        subscribe=(f"{inbox('bundles')}.>",),
    ),
}
#: Operators and tests: everything. No service runs with it.
ADMIN = "admin"


def new_seed() -> bytes:
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed: bytes) -> str:
    key: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return key.decode()


def write_seeds(directory: Path, names: tuple[str, ...] = (*IDENTITIES, ADMIN)) -> None:
    """A seed file per identity that has none yet (mode 600)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / f"{name}.nk"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_bytes(new_seed())


def public_keys(directory: Path) -> dict[str, str]:
    return {
        path.stem: public_key(path.read_bytes().strip())
        for path in sorted(directory.glob("*.nk"))
        if path.stem in IDENTITIES or path.stem == ADMIN
    }


def permissions(name: str) -> dict[str, dict[str, list[str]]]:
    """An identity's permissions as nats-server configuration writes them."""
    allowed = IDENTITIES[name]
    return {
        "publish": {"allow": list(allowed.publish)},
        "subscribe": {"allow": list(allowed.subscribe)},
    }


def key_variable(name: str) -> str:
    """The environment variable a deployed nats-server reads an identity's public key from."""
    return f"AVATAR_NKEY_{name.upper()}"


def authorization(keys: dict[str, str]) -> str:
    """A nats-server ``authorization`` block: each key with its identity's permissions.
    A key may be a ``$VARIABLE`` the server resolves from its environment."""
    users = []
    for name, key in keys.items():
        if name == ADMIN:
            users.append(f"    {{ nkey: {key} }}  # {name}: everything")
            continue
        users.append(
            f"    {{ nkey: {key}, permissions: {json.dumps(permissions(name))} }}  # {name}"
        )
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


def server_config(directory: Path) -> Path:
    """A seed per identity that has none in ``directory`` (made once), and beside them a
    nats-server configuration (``nats.conf``) that gives each its permissions."""
    write_seeds(directory)
    config = directory / "nats.conf"
    config.write_text(authorization(public_keys(directory)))
    return config


def deployed_authorization() -> str:
    """The block for a deployed server, public keys from its environment
    (``AVATAR_NKEY_<IDENTITY>``, from the ConfigMap ``avatar-nats-identities``)."""
    names = (*IDENTITIES, ADMIN)
    header = "# Generated by `make docs` from avatar_shared.bus.identities: do not edit.\n"
    return header + authorization({name: f"${key_variable(name)}" for name in names})
