"""The default agent: deterministic, offline, and clearly labelled as such.

It lets the whole product (charging, streaming, history) run on a laptop or in CI with no
LLM key; the reply depends only on its input, so tests can assert on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from . import Turn

LABEL = "[offline agent]"


class OfflineAgent:
    """Echo-style replies that say which agent answered and what it received."""

    name = "offline"

    def reply(self, history: Sequence[Turn], message: str) -> str:
        """The whole reply, computed from the input alone."""
        text = " ".join(message.split())
        words = len(text.split())
        earlier = sum(1 for turn in history if turn.role == "user")
        return (
            f"{LABEL} No language model is configured, so this is a canned answer. "
            f'You said: "{text}" ({words} word{"s" if words != 1 else ""}; '
            f"{earlier} earlier message{'s' if earlier != 1 else ''} in this conversation). "
            "Set LLM_MODEL, LLM_BASE_URL and LLM_API_KEY to talk to a real model."
        )

    async def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        """Yield the reply word by word, like a model would."""
        words = self.reply(history, message).split(" ")
        for index, word in enumerate(words):
            yield word if index == 0 else " " + word
            await asyncio.sleep(0)
