"""aigw: an AI gateway with per-key token limits."""

__version__ = "0.1.0"
