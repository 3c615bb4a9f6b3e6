"""Variables and secrets that jobs get, per owner and per repository."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.crypto import SecretBox
from api.errors import ValidationFailed
from api.jobs.environment import is_reserved_name, is_valid_name
from api.storage import Storage
from api.storage.records import EnvEntry, RepositoryRecord


@dataclass(frozen=True)
class EnvUpdate:
    """A PUT body: each section present replaces that whole set."""

    vars: dict[str, str] | None
    secrets: dict[str, str] | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> EnvUpdate:
        update = cls(vars=_section(body, "vars"), secrets=_section(body, "secrets"))
        for name in sorted(set(update.vars or ()) & set(update.secrets or ())):
            raise ValidationFailed(
                ["body", "secrets", name], "is given as a variable and as a secret"
            )
        return update


def _section(body: Mapping[str, Any], key: str) -> dict[str, str] | None:
    raw = body.get(key)
    if raw is None:
        return None
    values: dict[str, str] = {}
    for name, value in raw.items():
        if not is_valid_name(name):
            raise ValidationFailed(
                ["body", key, name], "is not a valid environment variable name"
            )
        if is_reserved_name(name):
            raise ValidationFailed(
                ["body", key, name], "is reserved by Hobotnica and cannot be set"
            )
        if value is None:
            continue
        if "\0" in value:
            raise ValidationFailed(["body", key, name], "must not contain NUL")
        values[name] = value
    return values


def _shape(entries: list[EnvEntry]) -> dict[str, Any]:
    return {
        "vars": {e.name: e.value for e in entries if not e.is_secret},
        "secrets": sorted(e.name for e in entries if e.is_secret),
    }


async def repository_env(
    storage: Storage, repository: RepositoryRecord
) -> dict[str, Any]:
    return _shape(await storage.env.repository_entries(repository.id))


async def owner_env(storage: Storage, owner: str) -> dict[str, Any]:
    return _shape(await storage.env.owner_entries(owner))


async def replace_repository_env(
    storage: Storage, box: SecretBox, repository: RepositoryRecord, update: EnvUpdate
) -> None:
    async with storage.db.transaction() as conn:
        await storage.repositories.ensure_present(conn, repository.id)
        _check_one_set(update, await storage.env.repository_entries(repository.id))
        if update.vars is not None:
            await storage.env.replace_repository(
                conn, repository.id, is_secret=False, values=update.vars
            )
        if update.secrets is not None:
            await storage.env.replace_repository(
                conn,
                repository.id,
                is_secret=True,
                values=_encrypted(box, update.secrets),
            )


async def replace_owner_env(
    storage: Storage, box: SecretBox, owner: str, update: EnvUpdate
) -> None:
    async with storage.db.transaction() as conn:
        _check_one_set(update, await storage.env.owner_entries(owner))
        if update.vars is not None:
            await storage.env.replace_owner(
                conn, owner, is_secret=False, values=update.vars
            )
        if update.secrets is not None:
            await storage.env.replace_owner(
                conn, owner, is_secret=True, values=_encrypted(box, update.secrets)
            )


def _check_one_set(update: EnvUpdate, stored: list[EnvEntry]) -> None:
    """A name is a variable or a secret, never both.

    A section left out of the update keeps its stored names, so a new
    variable must not take the name of a kept secret (storing it would
    silently drop that secret), and the other way round.
    """
    kept_vars = {e.name for e in stored if not e.is_secret}
    kept_secrets = {e.name for e in stored if e.is_secret}
    if update.vars is not None and update.secrets is None:
        for name in sorted(set(update.vars) & kept_secrets):
            raise ValidationFailed(
                ["body", "vars", name],
                "is a secret already; replace the secrets in the same request",
            )
    if update.secrets is not None and update.vars is None:
        for name in sorted(set(update.secrets) & kept_vars):
            raise ValidationFailed(
                ["body", "secrets", name],
                "is a variable already; replace the variables in the same request",
            )


def _encrypted(box: SecretBox, values: Mapping[str, str]) -> dict[str, str]:
    return {name: box.encrypt(value) for name, value in values.items()}
