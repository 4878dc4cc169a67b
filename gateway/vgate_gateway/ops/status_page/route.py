"""``GET /status``: the status page, served on the internal port next to ``/stats``."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import HTMLResponse

router = APIRouter()


@cache
def page() -> str:
    """The page's HTML, read once from the package (it never changes while the process runs)."""
    return files(__package__).joinpath("page.html").read_text(encoding="utf-8")


@router.get("/status", include_in_schema=False)
async def status() -> HTMLResponse:
    # The page fetches /stats from the same origin; nothing else is loaded.
    return HTMLResponse(page(), headers={"Cache-Control": "no-store"})
