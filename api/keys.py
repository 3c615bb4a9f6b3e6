"""Typed keys of the application's shared resources."""

from __future__ import annotations

from aiohttp import web

from api.crypto import SecretBox
from api.github import GitHubClient
from api.jobs.events import JobEvents
from api.jobs.runner import JobRunner
from api.responses import ResponseSchemas
from api.settings import Settings
from api.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
STORAGE = web.AppKey("storage", Storage)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
GITHUB = web.AppKey("github", GitHubClient)
EVENTS = web.AppKey("events", JobEvents)
RUNNER = web.AppKey("runner", JobRunner)
RESPONSE_SCHEMAS = web.AppKey("response_schemas", ResponseSchemas)
