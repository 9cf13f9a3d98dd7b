"""Provider adapters, one per provider kind: the registry the pipeline uses.

Each translates between Chat Completions (what the relay speaks) and its
provider's wire format; docs/providers.md has the mapping table per kind.
"""

from __future__ import annotations

from aigw.proxy.adapters.anthropic import AnthropicAdapter
from aigw.proxy.adapters.azure import AzureOpenAIAdapter
from aigw.proxy.adapters.base import Adapter
from aigw.proxy.adapters.gemini import GeminiAdapter
from aigw.proxy.adapters.openai import OpenAIAdapter

# kind -> adapter (stateless: one instance serves every request).
ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "azure_openai": AzureOpenAIAdapter(),
}

__all__ = ["ADAPTERS", "Adapter"]
