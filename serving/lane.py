"""The inference lane: inference requests answered in front of KServe's app, by the same calls.

Every request to KServe's app goes through FastAPI's and Starlette's layers before its route's
handler runs: FastAPI's native telemetry check, the server-error, exception-telemetry and
body-limit middlewares, KServe's ``TimingMiddleware`` (its ``kserve.trace`` lines), the exception
middleware, the exit-stack middleware and the router, each an ASGI call with its own wrappers. For
a one-row prediction here those layers cost about as much as the model (docs/serving.md,
"Benchmark"). ``InferenceLane`` is the ASGI app uvicorn serves, with KServe's app behind it:

- a ``POST`` to an inference route, ``/v2/models/<name>/infer``,
  ``/v2/models/<name>/versions/<version>/infer`` or ``/v1/models/<name>:predict``, is answered
  here by the route's own handler (``answer``: the same data-plane calls, response bytes and
  headers), when no skipped layer has anything to do: KServe's ``kserve.trace`` logger does not log
  INFO, FastAPI's telemetry is off and the app sets no body limit;
- a request the handler does not answer (not plain JSON, a CloudEvent, binary tensors: it
  returns None) goes to KServe's app with its body as it was received;
- a request whose handler raises (a body the model refuses, a version not served, a model not
  ready, any error) goes to KServe's app with the exception (``RAISED`` in its scope): the
  route raises it where its handler would have, so KServe's middlewares and exception handlers
  make the same error response, log line and timing line, and the model is not called twice;
- everything else goes to KServe's app untouched.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kserve.logging import trace_logger
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

RAISED = "serving.lane.raised"  # the scope key of the exception handed to KServe's app
Answer = Callable[[str, Request], Awaitable[Response | None]]


def route_of(path: str) -> tuple[str, dict[str, str]] | None:
    """The inference route a path names, with its path parameters (as the router's ``[^/]+``
    parameters match them); None for any other path."""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer":
        return ("v2", {"model_name": parts[3]}) if parts[3] else None
    if (
        len(parts) == 7
        and parts[:3] == ["", "v2", "models"]
        and parts[4] == "versions"
        and parts[6] == "infer"
        and parts[3]
        and parts[5]
    ):
        return "v2", {"model_name": parts[3], "model_version": parts[5]}
    if len(parts) == 4 and parts[:3] == ["", "v1", "models"] and parts[3].endswith(":predict"):
        name = parts[3][: -len(":predict")]
        return ("v1", {"model_name": name}) if name else None
    return None


class InferenceLane:
    """The ASGI app in front of KServe's FastAPI ``app`` (see the module's docstring).
    ``answer(protocol, request)`` is the inference routes' handler; ``answered`` counts the
    requests answered here."""

    def __init__(self, app: Any, answer: Answer, recheck_seconds: float = 1.0):
        self.app = app
        self.answer = answer
        self.answered = 0
        # how long the answer of ``_open`` is kept: a logging or telemetry set-up changed while
        # serving is seen within this time (FastAPI's telemetry check alone costs ~5 % of a
        # one-row request)
        self.recheck_seconds = recheck_seconds
        self._checked = (-math.inf, False)  # (when, open)

    def _open(self) -> bool:
        """No layer the lane skips would do anything with a successful request."""
        now = time.monotonic()
        when, is_open = self._checked
        if now - when < self.recheck_seconds:
            return is_open
        telemetry = getattr(self.app, "_native_telemetry", None)  # FastAPI's, since 0.13x
        is_open = (
            not trace_logger.isEnabledFor(logging.INFO)
            and getattr(self.app, "max_body_size", None) is None
            and (telemetry is None or not telemetry.enabled())
        )
        self._checked = (now, is_open)
        return is_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = route_of(scope["path"])
        if route is None or not self._open():
            await self.app(scope, receive, send)
            return
        protocol, params = route
        received: list[Message] = []  # what the lane read, replayed to KServe's app

        async def record() -> Message:
            message = await receive()
            received.append(message)
            return message

        try:
            response = await self.answer(
                protocol, Request({**scope, "path_params": params}, record)
            )
        except Exception as exc:  # handed to KServe's app, which answers it as its route would
            scope[RAISED] = exc
            response = None
        if response is None:
            await self.app(scope, _replay(received, receive), send)
            return
        self.answered += 1
        await response(scope, receive, send)


def _replay(received: list[Message], receive: Receive) -> Receive:
    """A receive that gives ``received`` again, in order, then the connection's own."""
    pending = list(received)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
