"""The ASGI entry point that servers load by name: ``uvicorn aigw.main:create_app
--factory`` (as ``aigw serve`` does). Nothing imports this module; code that needs
an application imports :func:`aigw.app.create_app`.

Before the app's routers are imported (FastAPI builds their routes then), FastAPI's
``pydantic.v1`` probes are made to answer without importing it
(:func:`aigw.runtime_memory.skip_pydantic_v1_until_imported`, ~1.7 MB).
"""

from aigw.runtime_memory import skip_pydantic_v1_until_imported

skip_pydantic_v1_until_imported()

from aigw.app import create_app  # noqa: E402  (after the probes are patched)

__all__ = ["create_app"]
