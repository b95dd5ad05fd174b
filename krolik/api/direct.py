"""Direct routes: answered by the edge before FastAPI's middleware and router see them.

Reserved for the hot path, ``POST /tasks/``: on it, Starlette's exception middleware,
FastAPI's route matching and its request handling cost about a quarter of the API's CPU
(single submit gained 31-39% in paired runs). A direct route is still declared on the
FastAPI router, with the same endpoint, so the OpenAPI document and any non-direct caller
see one route. Its endpoint takes only the ``Request`` (it reads key and body by hand,
``krolik/api/json_body.py``) and returns a ``Response``. Its errors go to the app's
exception handlers exactly as Starlette would route them; an unexpected one propagates
to the outermost middleware, which answers 500 through the app's ``Exception`` handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, APIRouter
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    def __init__(self, app: FastAPI, router: APIRouter, endpoints: Iterable[Endpoint]) -> None:
        """The routes of ``router`` (included in ``app`` with no prefix) whose endpoint is
        one of ``endpoints`` are served directly.

        Build it once the app's routers and exception handlers are installed.
        """
        wanted = set(endpoints)
        self._routes: dict[tuple[str, str], APIRoute] = {
            (method, route.path): route
            for route in router.routes
            if isinstance(route, APIRoute) and route.endpoint in wanted
            for method in route.methods or ()
        }
        # As Starlette splits them: handlers of Exception (and 500) belong to the outermost
        # middleware, status-code handlers answer HTTPExceptions, class handlers the rest.
        handlers = app.exception_handlers
        self._by_status = {
            key: handler for key, handler in handlers.items() if isinstance(key, int)
        }
        self._by_class = {
            key: handler
            for key, handler in handlers.items()
            if isinstance(key, type) and key is not Exception
        }

    def match(self, scope: Scope) -> APIRoute | None:
        if not self._routes or scope.get("root_path"):
            return None  # behind a path prefix, leave the matching to the router
        return self._routes.get((scope["method"], scope["path"]))

    async def serve(self, route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        endpoint: Endpoint = route.endpoint
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_of(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
            exc.__traceback__ = None
        await response(scope, receive, send)

    def _handler_of(self, exc: Exception) -> Any:
        if isinstance(exc, HTTPException) and exc.status_code in self._by_status:
            return self._by_status[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self._by_class:
                return self._by_class[cls]
        return None
