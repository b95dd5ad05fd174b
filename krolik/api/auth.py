"""Who calls the API: the key sent as ``Authorization: Bearer <key>``, its scope, and the
rate limit counted against it (``krolik/access.py`` holds the keys themselves)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from krolik.access import Scope, hash_key
from krolik.api.deps import api_of, settings_of, store_of
from krolik.settings import Settings
from krolik.store.base import TaskStore


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's name and scope, or anonymous when auth is off."""

    name: str | None
    scope: Scope
    client: str

    @property
    def rate_key(self) -> str:
        return f"key:{self.name}" if self.name else f"addr:{self.client}"


class AuthError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


bearer = HTTPBearer(auto_error=False, description="An API key made with `krolik keys create`.")


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through callers holding ``scope`` (or more)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        return await _authorize(request, credentials, scope)

    return check


async def authorize(request: Request, scope: Scope) -> Principal:
    """What ``require(scope)`` checks, for a route that reads its request by hand.

    The route must still declare ``security=BEARER_SECURITY`` in its OpenAPI operation.
    """
    return await _authorize(request, await bearer(request), scope)


BEARER_SECURITY: list[dict[str, list[str]]] = [{bearer.scheme_name: []}]
"""The OpenAPI security requirement the ``bearer`` scheme adds to the routes using it."""


async def _authorize(
    request: Request, credentials: HTTPAuthorizationCredentials | None, scope: Scope
) -> Principal:
    limiter = api_of(request).rate_limiter
    try:
        principal = await _identify(
            request, store_of(request), settings_of(request), credentials, scope
        )
    except AuthError as exc:
        if exc.status_code == 401 and limiter.enabled:
            # No key to count against: a client guessing keys is limited by address.
            await limiter.hit(f"addr:{_client_of(request)}")
        raise
    if limiter.enabled:
        await limiter.hit(principal.rate_key)
    return principal


def _client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _identify(
    request: Request,
    store: TaskStore,
    settings: Settings,
    credentials: HTTPAuthorizationCredentials | None,
    scope: Scope,
) -> Principal:
    client = _client_of(request)
    if not settings.auth.enabled:
        return Principal(name=None, scope=Scope.ADMIN, client=client)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError(401, "an API key is required: Authorization: Bearer <key>")
    cache = api_of(request).keys
    key = await cache.find(store, hash_key(credentials.credentials))
    if key is None:
        raise AuthError(401, "the API key is not valid or was revoked")
    granted = Scope.parse(key.scope)
    if granted < scope:
        raise AuthError(
            403, f"the key {key.name!r} has scope {key.scope}; this needs {scope.name.lower()}"
        )
    return Principal(name=key.name, scope=granted, client=client)


ReadAccess = Annotated[Principal, Depends(require(Scope.READ))]
SubmitAccess = Annotated[Principal, Depends(require(Scope.SUBMIT))]
AdminAccess = Annotated[Principal, Depends(require(Scope.ADMIN))]
