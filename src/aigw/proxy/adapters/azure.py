"""Adapter for ``kind: azure_openai`` providers: Azure OpenAI's deployment API.

Azure serves the Chat Completions wire format itself, so nothing is
translated (bodies and events relay as for ``kind: openai``). What differs is
the address and the credential: ``base_url`` is the resource endpoint
(``https://<resource>.openai.azure.com``), each request goes to
``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…``
where the deployment is the one the provider's model names (its own name
when none is set) and the api-version is the provider's (default
:data:`DEFAULT_API_VERSION`), and the key code travels in the ``api-key``
header. The body's ``model`` is sent as is; Azure answers for the deployment.
"""

from __future__ import annotations

from yarl import URL

from aigw.providers.schemas import DEFAULT_AZURE_API_VERSION
from aigw.proxy.adapters.openai import OpenAIAdapter, _endpoint
from aigw.proxy.keycache import ResolvedKey

DEFAULT_API_VERSION = DEFAULT_AZURE_API_VERSION


def deployment_url(key: ResolvedKey) -> URL:
    deployment = key.deployment or key.model
    version = key.api_version or DEFAULT_API_VERSION
    return _endpoint(
        key.base_url,
        f"/openai/deployments/{deployment}/chat/completions?api-version={version}",
    )


class AzureOpenAIAdapter(OpenAIAdapter):
    kind = "azure_openai"

    def url(self, key: ResolvedKey, stream: bool = False) -> URL:
        return deployment_url(key)

    def headers(self, key: ResolvedKey, request_id: str, stream: bool) -> dict[str, str]:
        assert key.key_code is not None
        return {
            "api-key": key.key_code,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": request_id,
        }
