"""A real model behind any OpenAI-compatible API (OpenAI, vLLM, Ollama, ...), via pydantic-ai.

Configured by LLM_MODEL, LLM_BASE_URL and LLM_API_KEY. The key is passed to the provider and
never logged or echoed into errors shown to users.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import httpx2 as httpx  # what openai 3 (and so pydantic-ai's OpenAI provider) uses
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings

from . import DEFAULT_MAX_TOKENS, Turn

INSTRUCTIONS = (
    "You are the tokenbill assistant. Answer helpfully and concisely. "
    "Each request costs the user a token, so avoid needless length."
)
HTTP_TIMEOUT_SECONDS = 120.0  # the endpoint's AGENT_TIMEOUT_SECONDS cuts in earlier anyway

ModelFactory = Callable[[httpx.AsyncClient], Model]


def to_messages(history: Sequence[Turn]) -> list[ModelMessage]:
    """Convert stored turns into pydantic-ai's message history."""
    messages: list[ModelMessage] = []
    for turn in history:
        if turn.role == "user":
            messages.append(ModelRequest(parts=[UserPromptPart(content=turn.content)]))
        else:
            messages.append(ModelResponse(parts=[TextPart(content=turn.content)]))
    return messages


def openai_compatible(model: str, base_url: str | None, api_key: str | None) -> ModelFactory:
    """A factory of OpenAI-compatible chat models sharing one HTTP client per request.

    No retries (the SDK retries 5xx/429 twice by default): each attempt may be billed to us
    while the buyer pays one price, so a failing call fails once and its hold is released.
    """
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    def build(http_client: httpx.AsyncClient) -> Model:
        client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            http_client=http_client,
            max_retries=0,
        )
        return OpenAIChatModel(model, provider=OpenAIProvider(openai_client=client))

    return build


class LLMAgent:
    """Stream text deltas from a pydantic-ai model.

    Give it a ready ``Model`` (tests use pydantic-ai's offline TestModel), or a factory that
    builds one around an HTTP client: each request runs on its own event loop, and an HTTP
    client must not outlive the loop it was used on.
    """

    name = "llm"

    def __init__(
        self,
        model: Model | ModelFactory,
        instructions: str = INSTRUCTIONS,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        price_key: str | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.model = model
        self.max_tokens = max_tokens  # sent with every model call: bounds what one call costs us
        self.price_key = price_key or self.name  # the row of tokenbill.prices that applies
        self.agent: Agent[None, str] = Agent(instructions=instructions)

    @classmethod
    def from_settings(
        cls,
        model: str,
        base_url: str | None,
        api_key: str | None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> LLMAgent:
        """The configured OpenAI-compatible model; no network until the first request."""
        return cls(
            openai_compatible(model, base_url, api_key), max_tokens=max_tokens, price_key=model
        )

    async def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        """Yield the model's reply as it arrives."""
        if isinstance(self.model, Model):
            async for delta in self._run(self.model, history, message):
                yield delta
            return
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
            async for delta in self._run(self.model(client), history, message):
                yield delta

    async def _run(self, model: Model, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        async with self.agent.run_stream(
            message,
            message_history=to_messages(history),
            model=model,
            model_settings=ModelSettings(max_tokens=self.max_tokens),
        ) as run:
            async for delta in run.stream_text(delta=True, debounce_by=None):
                yield delta
