"""``create_app``: the only place where Hobotnica is wired together."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from rororo import get_openapi_schema, setup_openapi

from api import __version__, health
from api.crypto import SecretBox, load_or_create_key
from api.github import GitHubClient
from api.jobs import views as job_views
from api.jobs.events import JobEvents
from api.jobs.runner import JobRunner
from api.jobs.statuses import StatusReporter
from api.keys import (
    EVENTS,
    GITHUB,
    RESPONSE_SCHEMAS,
    RUNNER,
    SECRET_BOX,
    SETTINGS,
    STORAGE,
)
from api.middlewares import (
    add_request_id_header,
    outer_middlewares,
    render_error,
    response_validation_middleware,
)
from api.repositories import views as repository_views
from api.repositories.access import AccessChecker
from api.responses import ResponseSchemas
from api.settings import Settings
from api.storage import Storage
from api.ui import setup_docs
from api.webhooks import views as webhook_views

SCHEMA_PATH = Path(__file__).parent / "openapi.yaml"

# rororo and aiohttp-middlewares keep their state under plain string keys.
warnings.filterwarnings(
    "ignore", category=web.NotAppKeyWarning, module=r"(rororo|aiohttp_middlewares)\."
)
LARGE_BODY_OPERATIONS = frozenset({webhook_views.ROUTE_NAME})


def create_app(settings: Settings | list[str] | None = None) -> web.Application:
    """Build the application from ``settings``, or from the environment
    (``None``, or the argv list that ``python -m aiohttp.web`` passes)."""
    if not isinstance(settings, Settings):
        settings = Settings.from_env()
    app = web.Application(client_max_size=settings.webhook_body_max_bytes)
    app[SETTINGS] = settings

    setup_openapi(
        app,
        SCHEMA_PATH,
        health.operations,
        repository_views.operations,
        job_views.operations,
        server_url="/api",
        # Validated by our own inner middleware, which knows streamed logs.
        is_validate_response=False,
        use_cors_middleware=False,
        error_middleware_kwargs={"default_handler": render_error},
        cache_create_schema_and_spec=True,
    )
    for middleware in reversed(
        outer_middlewares(
            settings.body_max_bytes,
            settings.webhook_body_max_bytes,
            LARGE_BODY_OPERATIONS,
        )
    ):
        app.middlewares.insert(0, middleware)
    app[RESPONSE_SCHEMAS] = ResponseSchemas.from_spec(get_openapi_schema(app))
    app.middlewares.append(response_validation_middleware)
    app.on_response_prepare.append(add_request_id_header)
    webhook_views.setup_webhooks(app)
    setup_docs(app, title=f"Hobotnica {__version__}")

    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(github_context)
    app.cleanup_ctx.append(jobs_context)
    return app


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(settings.database_path)
    await storage.open()
    app[STORAGE] = storage
    app[SECRET_BOX] = SecretBox(
        load_or_create_key(settings.secret_key, settings.key_path)
    )
    yield
    await storage.close()


async def github_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with aiohttp.ClientSession() as session:
        app[GITHUB] = GitHubClient(
            session,
            api_url=settings.github_api_url,
            timeout=settings.github_timeout,
            cache_ttl=settings.github_cache_ttl,
            user_agent=f"hobotnica/{__version__}",
        )
        yield


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    storage = app[STORAGE]
    events = JobEvents()
    runner = JobRunner(settings, storage, app[SECRET_BOX], events)
    reporter = StatusReporter(
        settings, storage, app[SECRET_BOX], app[GITHUB], give_way=runner.starts_done
    )
    checker = AccessChecker(settings, storage, app[SECRET_BOX], app[GITHUB], runner)
    events.subscribe(reporter.on_event, name="commit-statuses")
    events.subscribe(checker.on_event, name="access-checks")
    app[EVENTS] = events
    app[RUNNER] = runner
    app[health.HEALTH_KEY] = health.HealthChecks(storage, settings.data_dir, runner)
    await runner.start()
    reporter.start()
    checker.start()
    yield
    await runner.close()
    await checker.close()
    await events.close()
    await reporter.close()
