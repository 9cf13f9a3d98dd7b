"""Strong ETags carry the row version: ``"<version>"``; ``If-Match`` is checked against it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Response

from aigw.errors import PreconditionFailed

NO_VERSION = -1  # versions start at 1


def etag_for(version: int) -> str:
    return f'"{version}"'


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag_for(version)


def check_version(current: int, if_match: int | None) -> None:
    """412 unless *if_match* (from :func:`parse_if_match`) is absent or names *current*."""
    if if_match is not None and if_match != current:
        raise PreconditionFailed(f"current version is {current}")


def parse_if_match(
    if_match: Annotated[
        str | None,
        Header(
            description='Optimistic concurrency: the ETag from a previous GET (e.g. `"3"`); '
            "412 when the resource changed since.",
            max_length=200,
        ),
    ] = None,
) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    value = if_match.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit() or len(value) > 12:
        # Matches no version we could have (a stale or foreign ETag): the service
        # answers 412 once the request is otherwise valid and the resource exists,
        # rather than 412 here before the path and body are even validated.
        return NO_VERSION
    return int(value)
