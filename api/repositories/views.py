"""Operation handlers of repositories and their environment."""

from __future__ import annotations

from aiohttp import web
from rororo import OperationTableDef, openapi_context

from api import auth
from api.keys import GITHUB, RUNNER, SECRET_BOX, SETTINGS, STORAGE
from api.repositories import env, service
from api.repositories.serializers import repository_to_dict

operations = OperationTableDef()


@operations.register
async def create_repository(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        owner = context.data["owner"]
        name = context.data["name"]
        branch = context.data.get("branch")
    allowed = await auth.authorize_repository(request, owner, name, push=True)
    box = request.app[SECRET_BOX]
    repository, _ = await service.register(
        request.app[STORAGE],
        box,
        request.app[RUNNER],
        access=allowed.access,
        login=allowed.caller.login,
        token=allowed.caller.token,
        branch=branch,
    )
    body = repository_to_dict(
        repository,
        request.app[SETTINGS].base_url,
        webhook_secret=service.webhook_secret(box, repository),
    )
    return web.json_response(body, status=202, headers={"Location": body["url"]})


@operations.register
async def list_repositories(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        limit = context.parameters.query.get("limit", 20)
        offset = context.parameters.query.get("offset", 0)
    caller = await auth.authenticate(request)
    visible = await service.visible_to(
        request.app[STORAGE], request.app[GITHUB], caller.token
    )
    base_url = request.app[SETTINGS].base_url
    box = request.app[SECRET_BOX]
    items = []
    for repository, can_push in visible[offset : offset + limit]:
        secret = service.webhook_secret(box, repository) if can_push else None
        items.append(repository_to_dict(repository, base_url, webhook_secret=secret))
    return web.json_response({"items": items, "total": len(visible)})


@operations.register
async def retrieve_repository(request: web.Request) -> web.Response:
    allowed, repository = await auth.authorize_registered(request, push=False)
    secret = (
        service.webhook_secret(request.app[SECRET_BOX], repository)
        if allowed.can_push
        else None
    )
    return web.json_response(
        repository_to_dict(
            repository, request.app[SETTINGS].base_url, webhook_secret=secret
        )
    )


@operations.register
async def delete_repository(request: web.Request) -> web.Response:
    _, repository = await auth.authorize_registered(
        request, push=True, also_replaced=True
    )
    await service.unregister(request.app[STORAGE], request.app[RUNNER], repository)
    return web.Response(status=204)


@operations.register
async def retrieve_repository_env(request: web.Request) -> web.Response:
    _, repository = await auth.authorize_registered(request, push=False)
    return web.json_response(await env.repository_env(request.app[STORAGE], repository))


@operations.register
async def update_repository_env(request: web.Request) -> web.Response:
    with openapi_context(request) as context:
        update = env.EnvUpdate.from_body(context.data)
    _, repository = await auth.authorize_registered(request, push=True)
    storage = request.app[STORAGE]
    await env.replace_repository_env(
        storage, request.app[SECRET_BOX], repository, update
    )
    return web.json_response(await env.repository_env(storage, repository))


@operations.register
async def retrieve_owner_env(request: web.Request) -> web.Response:
    owner = request.match_info["owner"]
    await auth.authorize_owner(request, owner)
    return web.json_response(await env.owner_env(request.app[STORAGE], owner))


@operations.register
async def update_owner_env(request: web.Request) -> web.Response:
    owner = request.match_info["owner"]
    with openapi_context(request) as context:
        update = env.EnvUpdate.from_body(context.data)
    await auth.authorize_owner(request, owner)
    storage = request.app[STORAGE]
    await env.replace_owner_env(storage, request.app[SECRET_BOX], owner, update)
    return web.json_response(await env.owner_env(storage, owner))
