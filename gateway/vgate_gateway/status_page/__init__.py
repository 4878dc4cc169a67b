"""What an operator looks at on the internal port: the live status page and the recent errors.

``GET /status`` is one static HTML file with inline script and style (no build step, no CDN:
it works offline) that polls ``GET /stats`` and draws it. :class:`RecentErrors` keeps the last
error answers for the page, without prompts or keys.
"""

from vgate_gateway.status_page.recent_errors import RecentErrors, RecentErrorsMiddleware
from vgate_gateway.status_page.route import router

__all__ = ["RecentErrors", "RecentErrorsMiddleware", "router"]
