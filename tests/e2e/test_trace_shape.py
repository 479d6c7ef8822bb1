"""The shape of the traces `make run` exports, as an OTLP receiver sees them.

The whole stack runs with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointed at a receiver in this
test (tests.support.otlp_receiver, decoding opentelemetry-proto). After the scripted
conversation has ended and the stack has stopped (every exporter flushed):

- the conversation is one trace: every span about its room, whichever service made it;
- each reply's creation, playout and end are inside its ``agent_turn``; every decision of
  the actions service, drops included, is inside the conversation's trace, under the
  agent event it came from, and carries its outcome; a gesture's release and decision are inside the
  turn whose text held it;
- no span's parent is missing (no orphans), and no span holds the user's words (content
  tracing is off).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from avatar_agent.local import USER_TURNS
from tests.support import otlp_receiver
from tests.support.devstack import read_until, start_devstack
from tests.support.otlp_receiver import OtlpReceiver, Span

pytestmark = pytest.mark.timeout(180)


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


async def test_a_conversation_is_one_trace_with_its_turns_and_decisions_inside(
    tmp_path: Path,
) -> None:
    async with otlp_receiver.running(OtlpReceiver()) as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "AGENT_INACTIVITY_TIMEOUT_SECONDS": "5",  # the scripted session ends soon
        }
        proc = (await start_devstack(tmp_path, env=env)).proc
        out: list[str] = []
        try:
            ended = await read_until(proc, "session ended", out, within=90)
            room = json.loads(ended.split("| ", 1)[1])["room"]
            await asyncio.sleep(2)  # the actions service handles the end, and exports
        finally:
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                await proc.communicate()
        await asyncio.sleep(0.5)
        spans = list(receiver.spans)

    by_id = {s.span_id: s for s in spans}
    sessions = [s for s in spans if s.name == "agent_session"]
    assert len(sessions) == 1, Counter(s.name for s in spans)
    conversation = sessions[0].trace_id

    about_room = [s for s in spans if s.attributes.get("avatar.room") == room]
    services = {s.service for s in about_room}
    assert {"avatar-agent", "avatar-actions"} <= services
    assert {s.trace_id for s in about_room} == {conversation}  # one trace, every service

    for span in about_room:
        chain = [a.name for a in ancestors(span, by_id)]
        if " publish" in span.name and any(
            k in span.name for k in ("playout_started", "speech_done")
        ):
            assert "agent_turn" in chain, (span.name, chain)

    decisions = [s for s in about_room if "action_decision" in s.name and " publish" in s.name]
    assert decisions
    outcomes = {(d.attributes["avatar.action"], d.attributes["avatar.outcome"]) for d in decisions}
    assert ("moonwalk", "dropped") in outcomes  # the third reply's unknown gesture
    for decision in decisions:
        chain = ancestors(decision, by_id)
        assert any(a.service == "avatar-agent" and " publish" in a.name for a in chain), decision
        # in the turn that caused it: the tag's (a gesture), the playout's (speaking)
        assert "agent_turn" in [a.name for a in chain], (decision.attributes, chain)
    releases = [s for s in about_room if s.name == "actions release"]
    assert releases
    for release in releases:  # a release happens in the turn whose text held the gesture
        assert "agent_turn" in [a.name for a in ancestors(release, by_id)], release

    orphans = [s for s in spans if s.parent_id and s.parent_id not in by_id]
    assert orphans == [], Counter(s.name for s in orphans)

    said = [line for line in USER_TURNS]
    for span in spans:
        for value in span.attributes.values():
            assert not any(line in str(value) for line in said), (span.name, value)
