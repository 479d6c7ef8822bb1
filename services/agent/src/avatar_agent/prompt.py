"""The system prompt, built from one avatar's configuration.

It teaches the two tag forms with the avatar's own vocabulary: the emotions its voice
may take and the gestures it may make, each with the description from the avatars file.
Gesture tags go at the end of a sentence or reply: the actions service plays them once
the reply is done, so placing them where they belong keeps the transcript natural.
"""

from __future__ import annotations

from avatar_agent.avatars import Avatar


def build_instructions(avatar: Avatar) -> str:
    parts = [avatar.instructions.strip(), f"Your name is {avatar.name}."]
    parts.append(
        "You speak through a voice and an animated avatar. You may add inline tags to your "
        "reply; they are never read aloud or shown, so never mention or explain them."
    )
    if avatar.emotions:
        parts.append(
            'Voice emotion: write <emotion value="EMOTION"/> right before the words it '
            "colours. Allowed emotions: " + ", ".join(avatar.emotions) + ". Example: "
            f'<emotion value="{avatar.emotions[0]}"/> Good to see you.'
        )
    if avatar.actions:
        listed = "\n".join(
            f"- {name}: {description}" if description else f"- {name}"
            for name, description in avatar.actions.items()
        )
        first = next(iter(avatar.actions))
        parts.append(
            "Gestures: write [action:NAME] at the end of the reply; the avatar performs it "
            "after speaking. Use at most one or two per reply, only when they fit. Allowed "
            f"gestures:\n{listed}\nExample: Nice to meet you! [action:{first}]"
        )
    parts.append("Use no other tags and no markdown; your words are spoken.")
    return "\n\n".join(parts)
