"""The bounds of a key's numbers, without the ORM: the table's CHECK constraints
(:mod:`aigw.apikeys.models`), the API's validation (:mod:`aigw.apikeys.schemas`)
and the CLI's options (:mod:`aigw.cli.keys`) share them, and the CLI should not
import SQLAlchemy (about a third of ``aigw --help``'s start-up) to read three
integers."""

from __future__ import annotations

MAX_LIMIT = 10_000_000
MAX_BUDGET = 1_000_000_000_000
MAX_RPM = 10_000_000
