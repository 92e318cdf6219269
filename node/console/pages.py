"""The console's pages of the node's state: the overview (and the fragment
it refreshes itself from), the series, one series, its report, retrying a
failed job, the audit log.

Pages that only read are plain functions, which Starlette runs on its
thread pool: the snapshots open SQLite files and must not stall the loop.
"""

from __future__ import annotations

import math
import time

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from node.console.snapshot import overview, series_detail, series_page
from node.console.web import (
    checked_form,
    console_context,
    console_state,
    page,
    record_change,
    signed_in_user,
    whole_number,
)
from node.queue.job_state import JobState
from node.queue.jobs import JobNotFoundError, JobQueue
from node.receive.series_state import SeriesState

#: Series and audit entries per page.
PER_PAGE = 50
#: Instances per page of a series.
INSTANCES_PER_PAGE = 100
#: How often the overview refreshes itself, in seconds.
LIVE_EVERY_SECONDS = 2


def _page_number(request: Request, name: str = "page") -> int:
    value = request.query_params.get(name, "1")
    number = whole_number(value)
    if number is None:
        raise HTTPException(400, f"{name} must be a page number, not {value!r}")
    return max(1, number)


def overview_page(request: Request) -> Response:
    signed_in_user(request)
    return page(request, "overview.html", {"overview": overview(console_context(request), time.time()),
                                           "live_every": LIVE_EVERY_SECONDS})


def overview_live(request: Request) -> Response:
    """The overview's changing part alone, which the page polls."""
    signed_in_user(request)
    return page(request, "overview_live.html", {"overview": overview(console_context(request), time.time())})


def series_list(request: Request) -> Response:
    signed_in_user(request)
    state = request.query_params.get("state") or None
    if state is not None and state not in set(SeriesState):
        raise HTTPException(400, f"state must be one of {', '.join(SeriesState)}, not {state!r}")
    listing = series_page(console_context(request).storage_dir, _page_number(request), PER_PAGE, state)
    return page(request, "series_list.html", {"listing": listing, "states": tuple(SeriesState)})


def series_page_of(request: Request) -> Response:
    signed_in_user(request)
    detail = series_detail(console_context(request).storage_dir, request.path_params["uid"])
    if detail is None:
        raise HTTPException(404, "The index knows no such series.")
    pages = max(1, math.ceil(len(detail.instances) / INSTANCES_PER_PAGE))
    number = min(_page_number(request, "instances"), pages)
    start = (number - 1) * INSTANCES_PER_PAGE
    return page(request, "series_detail.html", {
        "detail": detail,
        "instances": detail.instances[start:start + INSTANCES_PER_PAGE],
        "instances_page": number,
        "instances_pages": pages,
        "failed": JobState.FAILED,
    })


def report_pdf(request: Request) -> Response:
    """The PDF report of the series' latest finished segmentation: the file its job
    wrote, never a path taken from the request."""
    signed_in_user(request)
    uid = request.path_params["uid"]
    detail = series_detail(console_context(request).storage_dir, uid)
    if detail is None or detail.report_pdf is None:
        raise HTTPException(404, "This series has no PDF report.")
    return FileResponse(detail.report_pdf, media_type="application/pdf",
                        filename=f"report-{detail.measurements_job}.pdf", content_disposition_type="inline")


def _retry(request: Request, job_id: int) -> str:
    """Queue job `job_id` again; the series it is of."""
    queue = JobQueue(console_context(request).storage_dir)
    try:
        job = queue.retry(job_id)
    except JobNotFoundError:
        raise HTTPException(404, f"There is no job {job_id}.") from None
    except ValueError as exc:  # not failed (running), or its series was removed
        raise HTTPException(409, str(exc)) from None
    finally:
        queue.close()
    record_change(request, "retry job", f"job {job.id} ({job.kind} of series {job.series_instance_uid}, "
                                        f"route {job.route}) queued again")
    return job.series_instance_uid


async def retry_job(request: Request) -> Response:
    await checked_form(request)
    job_id = whole_number(request.path_params["job_id"])
    if job_id is None:
        raise HTTPException(404, f"There is no job {request.path_params['job_id']!r}.")
    series_uid = await run_in_threadpool(_retry, request, job_id)
    return RedirectResponse(f"/series/{series_uid}", 303)


def audit_page(request: Request) -> Response:
    signed_in_user(request)
    entries = console_state(request).audit.page(_page_number(request), PER_PAGE)
    return page(request, "audit.html", {"audit": entries})


def state_routes() -> list[Route]:
    return [
        Route("/", overview_page, methods=["GET"]),
        Route("/overview/live", overview_live, methods=["GET"]),
        Route("/series", series_list, methods=["GET"]),
        Route("/series/{uid}", series_page_of, methods=["GET"]),
        Route("/series/{uid}/report.pdf", report_pdf, methods=["GET"]),
        Route("/jobs/{job_id}/retry", retry_job, methods=["POST"]),
        Route("/audit", audit_page, methods=["GET"]),
    ]
