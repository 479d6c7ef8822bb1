"""Every telemetry name this project defines, declared once.

Custom span and metric attributes carry the ``avatar.`` prefix; standard ones come from the
OpenTelemetry messaging conventions. Nothing personal goes into our span names,
attributes or log messages: room names are server-generated identifiers; participant
identities and conversation text are never recorded by our code (docs/telemetry.md,
"Personal data", says what livekit-agents records when ``AGENT_TRACE_CONTENT=true``).
"""

from __future__ import annotations

from typing import Final

# --- standard messaging attributes (OpenTelemetry semantic conventions) ---------------
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_DESTINATION_TEMPLATE: Final = "messaging.destination.template"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_MESSAGE_BODY_SIZE: Final = "messaging.message.body.size"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_SYSTEM_NATS: Final = "nats"

# --- project attributes -----------------------------------------------------------------
EVENT_TYPE: Final = "avatar.event.type"
EVENT_SEQ: Final = "avatar.event.seq"
ROOM: Final = "avatar.room"
AVATAR_ID: Final = "avatar.avatar_id"
SPEECH_ID: Final = "avatar.speech_id"
OUTCOME: Final = "avatar.outcome"
ACTION: Final = "avatar.action"
PARTITION: Final = "avatar.partition"
REASON: Final = "avatar.reason"
PROVIDER: Final = "avatar.provider"  # e.g. "openai", "Cartesia": the model's provider
STAGE: Final = "avatar.stage"  # "llm" or "tts"
DUPLICATE: Final = "avatar.bus.duplicate"
PRINCIPAL_KIND: Final = "avatar.principal.kind"
CACHE: Final = "avatar.bundles.cache"
CACHE_OPERATION: Final = "avatar.bundles.cache.operation"
UPSTREAM_STATUS: Final = "avatar.bundles.upstream.status"
SEND_ATTEMPTS: Final = "avatar.send.attempts"

# --- metrics ------------------------------------------------------------------------------
METRIC_BUS_PUBLISHED: Final = "avatar.bus.published"
METRIC_BUS_CONSUMED: Final = "avatar.bus.consumed"
METRIC_BUS_DROPPED: Final = "avatar.bus.dropped"
METRIC_BUS_CONNECTION_EVENTS: Final = "avatar.bus.connection.events"
METRIC_HTTP_REFUSED: Final = "avatar.http.server.refused"
METRIC_TOKENS_MINTED: Final = "avatar.token.minted"
METRIC_TOKENS_REFUSED: Final = "avatar.token.refused"
METRIC_BUNDLE_REQUESTS: Final = "avatar.bundles.requests"
METRIC_BUNDLE_UPSTREAM_CALLS: Final = "avatar.bundles.upstream.calls"
METRIC_BUNDLE_SHARED_CACHE: Final = "avatar.bundles.shared_cache.operations"
METRIC_BUNDLE_SHARED_CACHE_UP: Final = "avatar.bundles.shared_cache.up"
METRIC_ACTIONS_SEND_RETRIES: Final = "avatar.actions.send.retries"
METRIC_ACTIONS_DECISIONS: Final = "avatar.actions.decisions"
METRIC_ACTIONS_LATENCY: Final = "avatar.actions.latency"
METRIC_ACTIONS_HELD: Final = "avatar.actions.held"
METRIC_ACTIONS_WAITING: Final = "avatar.actions.waiting"
METRIC_ACTIONS_ROOMS: Final = "avatar.actions.rooms"
METRIC_ACTIONS_AGENT_DELIVERIES: Final = "avatar.actions.agent_deliveries"
METRIC_AGENT_EVENTS_DROPPED: Final = "avatar.agent.events.dropped"
METRIC_AGENT_EVENTS_QUEUED: Final = "avatar.agent.events.queued"
METRIC_AGENT_TAGS: Final = "avatar.agent.tags"
METRIC_AGENT_TAGS_DISCARDED: Final = "avatar.agent.tags.discarded"
METRIC_AUDIT_DROPPED: Final = "avatar.audit.dropped"
METRIC_SESSIONS_REFUSED: Final = "avatar.token.sessions.refused"
METRIC_AGENT_REPLIES_FAILED: Final = "avatar.agent.replies.failed"
METRIC_AGENT_SESSIONS_ACTIVE: Final = "avatar.agent.sessions.active"
METRIC_AGENT_SESSIONS_ENDED: Final = "avatar.agent.sessions.ended"
METRIC_AGENT_SESSIONS_REFUSED: Final = "avatar.agent.sessions.refused"
METRIC_AGENT_INPUT_TRUNCATED: Final = "avatar.agent.input.truncated"
METRIC_AGENT_INPUT_DROPPED: Final = "avatar.agent.input.dropped"

INSTRUMENTATION_NAME: Final = "avatar_shared"
