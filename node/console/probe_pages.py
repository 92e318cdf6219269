"""The test buttons: a C-ECHO, or a test object, sent to a destination in force.

A probe blocks for up to ``sending.timeout_seconds``, so it runs on the
thread pool, and at most :data:`PROBES_AT_ONCE` run at a time: a user
pressing every button of a long list cannot take the pool's threads (which
the read-only pages share) or open an association to each destination at
once. Each probe is written to the audit log, as it sends to a peer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from node.console.context import ConsoleContext
from node.console.web import checked_form, page, record_change, signed_in_user
from node.send.probe import echo, send_test_object

#: Probes running at once; another is answered "busy" (429) at once.
PROBES_AT_ONCE: Final = 2


def probe_routes(context: ConsoleContext) -> list[BaseRoute]:
    """The probes of `context`'s destinations in force, sharing one limit of PROBES_AT_ONCE."""
    slots = asyncio.Semaphore(PROBES_AT_ONCE)

    def probe_targets(request: Request) -> Response:
        """Every destination in force, each with its test buttons."""
        signed_in_user(request)
        targets = tuple(context.current_config().destinations)
        return page(request, "config_probes.html", {"probe_targets": targets})

    async def run_probe(request: Request, kind: str) -> Response:
        await checked_form(request)
        name = request.path_params["name"]
        config = context.current_config()
        destination = config.destinations.get(name)
        if destination is None:
            raise HTTPException(404, f"The configuration in force has no destination {name!r}.")
        if slots.locked():
            return page(request, "probe_result.html", {"name": name, "result": None, "busy": PROBES_AT_ONCE},
                        429)
        timeout = config.sending.timeout_seconds
        async with slots:
            if kind == "echo":
                result = await run_in_threadpool(echo, name, destination, config, timeout)
            else:
                result = await run_in_threadpool(send_test_object, name, destination, config, timeout,
                                                 time.time())
        record_change(request, f"probe.{kind}", result.summary)
        return page(request, "probe_result.html", {"name": name, "result": result, "busy": 0})

    async def probe_echo(request: Request) -> Response:
        return await run_probe(request, "echo")

    async def probe_test_object(request: Request) -> Response:
        return await run_probe(request, "test_object")

    return [
        Route("/probes", probe_targets, methods=["GET"]),
        Route("/destinations/{name}/echo", probe_echo, methods=["POST"]),
        Route("/destinations/{name}/test-object", probe_test_object, methods=["POST"]),
    ]
