"""Pluggable chat agents behind the metered endpoint.

An agent is anything with ``name`` and an async ``stream(history, message)`` that yields text
deltas. The endpoint charges, runs, stores and refunds; agents only produce text, so a new
provider (or a test double that fails) plugs in without touching the metering.

Which agent runs: ``app.config["AGENT"]`` when set (an instance, or a class/factory called
with no arguments), else the LLM agent when ``LLM_MODEL`` is configured, else the offline one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from flask import Flask

EXTENSION_KEY = "tokenbill_agent"
DEFAULT_MAX_TOKENS = 1024  # AGENT_MAX_TOKENS: the most output one model call may produce


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation, oldest first."""

    role: Literal["user", "assistant"]
    content: str


@runtime_checkable
class ChatAgent(Protocol):
    """What the endpoint needs from an agent."""

    name: str

    def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        """Yield the reply to ``message`` in pieces; raise to fail the request."""
        ...


class AgentError(RuntimeError):
    """An agent could not answer (bad configuration, provider error)."""


def build_agent(config: Mapping[str, Any]) -> ChatAgent:
    """Choose the agent from configuration."""
    configured = config.get("AGENT")
    if configured is not None:
        # a class (or factory) makes a fresh agent; anything else is used as it is
        is_factory = isinstance(configured, type) or not isinstance(configured, ChatAgent)
        agent = configured() if is_factory and callable(configured) else configured
        if not isinstance(agent, ChatAgent):
            raise AgentError(f"AGENT must provide name and stream(); got {agent!r}")
        return agent
    if config.get("LLM_MODEL"):
        from .llm import LLMAgent

        return LLMAgent.from_settings(
            model=config["LLM_MODEL"],
            base_url=config.get("LLM_BASE_URL") or None,
            api_key=config.get("LLM_API_KEY") or None,
            max_tokens=int(config.get("AGENT_MAX_TOKENS") or DEFAULT_MAX_TOKENS),
        )
    from .offline import OfflineAgent

    return OfflineAgent()


def price_key(agent: ChatAgent) -> str:
    """Which row of tokenbill.prices applies: the agent's ``price_key`` (an LLM's model name)
    when it has one, else its name; the database falls back to the '*' row."""
    return str(getattr(agent, "price_key", None) or agent.name)


def get_agent(app: Flask) -> ChatAgent:
    """The app's agent, built once on first use (a broken LLM setup fails requests, not boot)."""
    agent = app.extensions.get(EXTENSION_KEY)
    if agent is None:
        agent = build_agent(app.config)
        app.extensions[EXTENSION_KEY] = agent
    return agent
