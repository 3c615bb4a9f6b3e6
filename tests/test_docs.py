"""Swagger UI and its assets come from this server, no network needed."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from api.ui import ASSET_NAMES
from api.ui.standalone import create_standalone_app
from tests.support import Client


async def test_docs_page_and_every_asset_it_links_answer(client: Client) -> None:
    response = await client.get("/api/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert links, page
    for link in links:
        assert link.startswith("/api/docs/static/"), link
        asset = await client.get(link)
        assert asset.status == 200, link
        assert len(await asset.read()) > 0


async def test_every_bundled_asset_is_served(client: Client) -> None:
    for name in ASSET_NAMES:
        response = await client.get(f"/api/docs/static/{name}")
        assert response.status == 200, name


async def test_the_page_points_at_the_schema(client: Client) -> None:
    init = await (await client.get("/api/docs/static/init.js")).text()
    assert '"/api/openapi.json"' in init
    schema = await client.get("/api/openapi.json")
    assert schema.status == 200
    assert (await schema.json())["info"]["title"] == "Hobotnica"


async def test_unknown_routes_get_json_errors(client: Client) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status == 404
    assert await response.json() == {"detail": "Not Found"}
    response = await client.delete("/api/health")
    assert response.status == 405
    assert "detail" in await response.json()


async def test_standalone_ui_serves_docs_and_proxies_the_api(
    client: Client, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    api_url = str(client.make_url("")).rstrip("/")
    standalone = await aiohttp_client(create_standalone_app(api_url))
    page = await standalone.get("/api/docs")
    assert page.status == 200
    assert "swagger-ui-bundle.js" in await page.text()
    schema = await standalone.get("/api/openapi.json")
    assert schema.status == 200
    assert (await schema.json())["info"]["title"] == "Hobotnica"
    health = await standalone.get("/api/health", headers={"X-Request-ID": "via-proxy"})
    assert health.status == 200
    assert health.headers["X-Request-ID"] == "via-proxy"
    root = await standalone.get("/", allow_redirects=False)
    assert root.status == 302
    assert root.headers["Location"] == "/api/docs"
