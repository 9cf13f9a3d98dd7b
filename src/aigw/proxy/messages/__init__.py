"""Anthropic's Messages API as a way in (``POST /v1/messages``): :mod:`.ingress`
serves it through the proxy's usual stages, :mod:`.wire` translates."""
