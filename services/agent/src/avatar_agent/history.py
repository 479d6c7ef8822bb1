"""How much of the conversation the LLM is given each turn.

livekit-agents sends the whole conversation with every request. A session may last a day
(``max_session_seconds``), so without a bound each reply would cost more than the last
and a model with a small context (a local 8k model) would refuse every reply once the
conversation outgrew it. :func:`recent` keeps the newest items whose text fits a budget
of characters, with the instructions (the avatar's prompt) always first; the newest
item is kept whatever its size, so the user's last words are always answered.

The OpenAI Realtime model keeps the conversation on its server, which counts tokens and
cuts it there: :func:`realtime_truncation` asks it to keep the same budget, at about
four characters a token, and to cut back to 80% of it when it is passed (cutting less
often keeps more of the conversation in the provider's prompt cache).
"""

from __future__ import annotations

from livekit.agents import llm
from openai.types.realtime.realtime_truncation_retention_ratio import (
    RealtimeTruncationRetentionRatio,
    TokenLimits,
)

#: Characters per token, roughly, of English text for OpenAI's tokenizers.
CHARS_PER_TOKEN = 4
#: What the Realtime server keeps of the conversation when it cuts it.
RETENTION_RATIO = 0.8


def _chars(item: llm.ChatItem) -> int:
    if item.type == "message":
        return len(item.raw_text_content or "")
    if item.type == "function_call":
        return len(item.arguments)
    if item.type == "function_call_output":
        return len(item.output)
    return 0


def _is_instructions(item: llm.ChatItem) -> bool:
    return item.type == "message" and item.role in ("system", "developer")


def recent(chat_ctx: llm.ChatContext, max_chars: int) -> llm.ChatContext:
    """``chat_ctx`` itself if its conversation fits ``max_chars``, else a copy holding
    the instructions and the newest items that fit (at least one)."""
    used = 0
    for kept, item in enumerate(reversed(chat_ctx.items)):
        if not _is_instructions(item):
            used += _chars(item)
            if used > max_chars and kept:
                return chat_ctx.copy().truncate(max_items=kept)
    return chat_ctx


def realtime_truncation(max_chars: int) -> RealtimeTruncationRetentionRatio:
    """The Realtime session's ``truncation``: the conversation after the instructions
    kept within ``max_chars`` worth of tokens."""
    limits = TokenLimits(post_instructions=max(1, max_chars // CHARS_PER_TOKEN))
    return RealtimeTruncationRetentionRatio(
        type="retention_ratio", retention_ratio=RETENTION_RATIO, token_limits=limits
    )
