"""The server: LitServe's ``LitServer`` around :class:`~lit_mnist.serve.api.DigitAPI`, with the page, ``/info`` and
a guard in front of ``POST /predict``.

LitServe parses a request's body before the API sees it, and answers a body that is not JSON (or empty)
with a 500; :class:`RequestGuard` answers those with a 400 first, and uploads over the size limit with a
413 before they are read into memory. LitServe's own ``GET /`` and ``GET /info`` are replaced (on its
FastAPI app) by the page and by the model's description.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lit_mnist.runtime import cpu_share, env_threads
from lit_mnist.serve.api import BatchCounters, DigitAPI
from lit_mnist.serve.model import ServedModel
from lit_mnist.serve.payload import FORMS

__all__ = ["MAX_UPLOAD_BYTES", "RequestGuard", "build_server"]

#: The largest ``POST /predict`` body accepted: a phone's photo fits, a 50 MB upload gets a 413.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
#: An upload over the limit is read (and dropped) up to this many times the limit, then the connection is closed.
DRAIN_FACTOR = 4
#: The page and its files, shipped inside the package.
STATIC = Path(__file__).parent / "static"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"


class RequestGuard:
    """ASGI middleware in front of ``POST path``: the body is read (at most ``max_bytes``) and checked first.

    413 for a body over ``max_bytes`` (the bytes past the limit are dropped as they come), 400 for an empty body
    or one that is neither a form nor a JSON object; otherwise the body is handed on unchanged. A JSON
    object sent as a URL-encoded form (``curl -d '{...}'`` without a ``Content-Type``) is handed on as JSON.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_UPLOAD_BYTES, path: str = "/predict") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        too_large = declared.isdigit() and int(declared) > self.max_bytes
        body = bytearray()
        received, more = 0, True
        while more and received <= DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            more = bool(message.get("more_body", False))
            too_large = too_large or received > self.max_bytes
            if not too_large:
                body += chunk
        if (
            too_large
        ):  # read to its end, kept nowhere: a client that sends it all before reading gets the answer
            size = max(received, int(declared) if declared.isdigit() else 0)
            await self._refuse(scope, receive, send, 413, self._too_large(size, "" if not more else "over"))
            return
        content_type = headers.get("content-type", "").lower()
        if content_type.startswith(URLENCODED) and _json_object(bytes(body)):
            scope = {
                **scope,
                "headers": [
                    *_without(scope["headers"], b"content-type"),
                    (b"content-type", b"application/json"),
                ],
            }
        elif problem := self._problem(bytes(body), content_type):
            await self._refuse(scope, receive, send, 400, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # waits for the client to go
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, size: int, prefix: str = "") -> str:
        return (
            f"the body is {prefix + ' ' if prefix else ''}{size} bytes, more than the limit of {self.max_bytes} "
            "bytes; send a smaller image"
        )

    @staticmethod
    def _problem(body: bytes, content_type: str) -> str:
        if not body:
            return f"the body is empty; {FORMS}"
        if content_type.startswith((MULTIPART, URLENCODED)):
            return ""  # parsed by LitServe (starlette answers a broken form with a 400)
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            shown = content_type or "no Content-Type"
            return f"the body ({shown}) is neither JSON nor a multipart form; {FORMS}"
        if not isinstance(parsed, dict):
            return f"the JSON body must be an object, got {type(parsed).__name__}; {FORMS}"
        return ""

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        headers = {"connection": "close"} if status == 413 else None
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


def _json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _without(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    return [(key, value) for key, value in headers if key.lower() != name]


def build_server(
    model: ServedModel,
    invert: str = "auto",
    fit: str = "frame",
    max_batch_size: int = 32,
    batch_timeout: float = 0.005,
    workers: int = 1,
    accelerator: str = "auto",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> ls.LitServer:
    """A ``LitServer`` serving ``model``: ``POST /predict``, ``GET /`` (the page), ``/info`` and ``/health``.

    Args:
        model: The model (:func:`lit_mnist.serve.model.open_model`).
        invert: ``predict``'s ``--invert``.
        fit: ``predict``'s ``--fit``.
        max_batch_size: Requests classified together at most (1: each alone).
        batch_timeout: Seconds a batch waits for more requests.
        workers: Inference processes per device.
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
        max_upload_bytes: The largest request body accepted (413 above it).
    """
    counters = BatchCounters()
    # the workers and the HTTP server share the CPUs: more threads than CPUs wait for each other (OpenMP
    # threads spin as they wait), so each worker gets its share with one CPU left for the HTTP server
    threads = env_threads() or max(1, (cpu_share() - 1) // workers)
    api = DigitAPI(model, invert, fit, max_batch_size, batch_timeout, counters, threads)
    server = ls.LitServer(
        api,
        accelerator="cuda" if accelerator == "gpu" else accelerator,
        workers_per_device=workers,
        middlewares=[(RequestGuard, {"max_bytes": max_upload_bytes})],
        disable_openapi_url=True,  # its /docs page loads scripts from a CDN; this server works offline
    )
    settings = {
        "accelerator": accelerator,
        "devices": [str(d) for d in server.devices],
        "workers_per_device": workers,
        "max_batch_size": max_batch_size,
        "batch_timeout": batch_timeout,
        "invert": invert,
        "fit": fit,
        "max_upload_bytes": max_upload_bytes,
    }
    add_routes(server.app, model, settings, counters)
    return server


def add_routes(app: FastAPI, model: ServedModel, settings: dict[str, Any], counters: BatchCounters) -> None:
    """The page at ``/`` (its files under ``/static``) and ``GET /info``, in place of LitServe's own."""
    from lit_mnist import __version__

    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not (
            isinstance(route, APIRoute) and route.path in ("/", "/info") and "GET" in (route.methods or ())
        )
    ]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "model": model.describe(),
            "server": settings,
            "stats": counters.snapshot(),
            "lit_mnist": __version__,
        }

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
