"""Swagger UI served from the swagger-ui-bundle package's local assets."""

from __future__ import annotations

import html
from pathlib import Path

import swagger_ui_bundle
from aiohttp import web

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
ASSET_NAMES = (
    "swagger-ui.css",
    "index.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "favicon-32x32.png",
    "favicon-16x16.png",
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{static}/swagger-ui.css">
  <link rel="stylesheet" href="{static}/index.css">
  <link rel="icon" type="image/png" href="{static}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script src="{static}/swagger-ui-standalone-preset.js"></script>
  <script src="{static}/init.js"></script>
</body>
</html>
"""

INIT_JS = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: %s,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
};
"""


def setup_docs(
    app: web.Application,
    *,
    prefix: str = "/api/docs",
    schema_url: str = "/api/openapi.json",
    title: str = "Hobotnica API",
) -> None:
    """Serve the UI at ``prefix`` with its assets under ``prefix/static``."""
    static = f"{prefix}/static"
    page = PAGE.format(title=html.escape(title), static=static)
    init_js = INIT_JS % _js_string(schema_url)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def init(request: web.Request) -> web.Response:
        return web.Response(text=init_js, content_type="application/javascript")

    app.router.add_get(prefix, docs, name="docs")
    app.router.add_get(f"{prefix}/", docs)
    app.router.add_get(f"{static}/init.js", init)
    app.router.add_static(static, ASSETS, name="docs_static")


def _js_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("<", "\\u003c")
    return f'"{escaped}"'
