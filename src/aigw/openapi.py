"""Print the served OpenAPI schema: ``python -m aigw.openapi > openapi.json``
(``make openapi``); tests compare the committed file with :func:`render`."""

from __future__ import annotations

import base64
import sys
from typing import Any

import orjson
from pydantic import SecretStr

from aigw.app import create_app
from aigw.config import Settings


def build_schema() -> dict[str, Any]:
    # Placeholder secrets: building the schema needs no database and no real keys.
    settings = Settings(
        database_url="postgresql://unused/unused",
        admin_token=SecretStr("schema-only-" + "x" * 16),
        encryption_keys=SecretStr("schema:" + base64.urlsafe_b64encode(bytes(32)).decode()),
        token_pepper=SecretStr("schema-only-" + "y" * 16),
    )
    schema: dict[str, Any] = create_app(settings).openapi()
    return schema


def render() -> str:
    return (
        orjson.dumps(build_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        + "\n"
    )


if __name__ == "__main__":
    sys.stdout.write(render())
