"""Strong ETags carry the row version: ``"<version>"``; ``If-Match`` is checked against it."""

from __future__ import annotations

from typing import Annotated, Protocol, TypeVar

from fastapi import Header, Response

NO_VERSION = -1  # versions start at 1


def etag_for(version: int) -> str:
    return f'"{version}"'


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


VersionedT = TypeVar("VersionedT", bound=Versioned)


def with_etag(response: Response, resource: VersionedT) -> VersionedT:
    """*resource*, with its version set as the response's ``ETag``."""
    response.headers["ETag"] = etag_for(resource.version)
    return resource


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
