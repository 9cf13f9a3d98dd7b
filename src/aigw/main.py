"""The ASGI entry point that servers load by name: ``uvicorn aigw.main:create_app
--factory`` (as ``aigw serve`` does). Nothing imports this module; code that needs
an application imports :func:`aigw.app.create_app`.
"""

from aigw.app import create_app

__all__ = ["create_app"]
