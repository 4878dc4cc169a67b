"""``GET /status`` on the internal port: one static HTML file (inline script and style, no build
step, no CDN: it works offline) that polls ``GET /stats`` and draws it."""
