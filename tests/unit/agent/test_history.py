"""What a chat LLM is sent of a long conversation: the prompt and the newest that fits."""

from __future__ import annotations

from livekit.agents import llm

from avatar_agent.history import realtime_truncation, recent

PROMPT = "You are Ava. " * 500  # the instructions never count against the budget


def conversation(*lines: str) -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content=PROMPT)
    for n, line in enumerate(lines):
        ctx.add_message(role="user" if n % 2 == 0 else "assistant", content=line)
    return ctx


def texts(ctx: llm.ChatContext) -> list[str]:
    return [item.text_content or "" for item in ctx.items if item.type == "message"]


def test_a_conversation_within_the_budget_is_sent_whole() -> None:
    ctx = conversation("a" * 40, "b" * 40, "c" * 20)
    assert recent(ctx, 100) is ctx


def test_the_oldest_items_go_first_and_the_prompt_stays() -> None:
    ctx = conversation("a" * 40, "b" * 40, "c" * 40, "d" * 40)
    sent = recent(ctx, 100)
    assert texts(sent) == [PROMPT, "c" * 40, "d" * 40]
    assert len(texts(ctx)) == 5  # the agent's own history is not cut


def test_the_budget_counts_every_character_up_to_its_limit() -> None:
    ctx = conversation("a" * 40, "b" * 60, "c" * 40)
    assert texts(recent(ctx, 100)) == [PROMPT, "b" * 60, "c" * 40]
    assert texts(recent(ctx, 99)) == [PROMPT, "c" * 40]


def test_the_newest_item_is_sent_whatever_its_size() -> None:
    ctx = conversation("a" * 10, "b" * 500)
    assert texts(recent(ctx, 100)) == [PROMPT, "b" * 500]


def test_tool_calls_count_and_a_cut_never_leaves_an_orphan_output() -> None:
    ctx = conversation("what's the weather?")
    ctx.insert(llm.FunctionCall(call_id="c1", name="weather", arguments="{}" + " " * 58))
    ctx.insert(
        llm.FunctionCallOutput(
            call_id="c1", name="weather", output="sunny" + " " * 55, is_error=False
        )
    )
    ctx.add_message(role="assistant", content="It is sunny.")
    sent = recent(ctx, 100)
    assert [item.type for item in sent.items] == ["message", "message"]
    assert texts(sent) == [PROMPT, "It is sunny."]


def test_the_realtime_server_keeps_the_same_budget_in_tokens() -> None:
    truncation = realtime_truncation(16_000)
    assert truncation.token_limits is not None
    assert truncation.token_limits.post_instructions == 4000
    assert realtime_truncation(2).token_limits.post_instructions == 1  # type: ignore[union-attr]
