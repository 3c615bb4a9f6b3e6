"""Owner and repository environment: variables, write-only secrets, jobs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from tests.fakes.github import FakeGitHub
from tests.support import (
    READER,
    READER_TOKEN,
    Client,
    GitRemote,
    auth_headers,
    register,
    send_push,
    wait_for_job,
)

REPO_ENV = "/api/repositories/octocat/hello/env"
OWNER_ENV = "/api/owners/{}/env"
READER_HEADERS = auth_headers(READER, READER_TOKEN)
EMPTY: dict[str, Any] = {"vars": {}, "secrets": []}


async def put(
    client: Client,
    path: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    response = await client.put(path, json=body, headers=headers or auth_headers())
    return response.status, await response.json()


async def get(
    client: Client, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    response = await client.get(path, headers=headers or auth_headers())
    return response.status, await response.json()


@pytest.fixture
async def registered(client: Client, github: FakeGitHub, remote: GitRemote) -> None:
    await register(client)


# -- reading and writing ----------------------------------------------------------


@pytest.mark.usefixtures("registered")
async def test_secrets_are_write_only(client: Client) -> None:
    assert await get(client, REPO_ENV) == (200, EMPTY)
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    response = await client.put(
        REPO_ENV,
        json={"vars": {"STAGE": "prod"}, "secrets": {"DEPLOY_KEY": secret}},
        headers=auth_headers(),
    )
    assert response.status == 200
    text = await response.text()
    assert json.loads(text) == {"vars": {"STAGE": "prod"}, "secrets": ["DEPLOY_KEY"]}
    assert secret not in text
    response = await client.get(REPO_ENV, headers=auth_headers())
    text = await response.text()
    assert json.loads(text) == {"vars": {"STAGE": "prod"}, "secrets": ["DEPLOY_KEY"]}
    assert secret not in text


@pytest.mark.usefixtures("registered")
async def test_each_section_present_replaces_its_set(client: Client) -> None:
    status, env = await put(
        client,
        REPO_ENV,
        {"vars": {"A": "1", "B": "2"}, "secrets": {"S1": "x", "S2": "y"}},
    )
    assert (status, env) == (
        200,
        {"vars": {"A": "1", "B": "2"}, "secrets": ["S1", "S2"]},
    )
    # vars only: the secrets stay
    status, env = await put(client, REPO_ENV, {"vars": {"C": "3"}})
    assert env == {"vars": {"C": "3"}, "secrets": ["S1", "S2"]}
    # secrets only: the vars stay
    status, env = await put(client, REPO_ENV, {"secrets": {"S3": "z"}})
    assert env == {"vars": {"C": "3"}, "secrets": ["S3"]}
    # neither: nothing changes
    assert await put(client, REPO_ENV, {}) == (200, env)
    # a null value deletes that key
    status, env = await put(
        client, REPO_ENV, {"vars": {"C": None, "D": "4"}, "secrets": {"S3": None}}
    )
    assert (status, env) == (200, {"vars": {"D": "4"}, "secrets": []})
    # an empty section empties the set; values may be empty strings
    status, env = await put(client, REPO_ENV, {"vars": {"E": ""}})
    assert env == {"vars": {"E": ""}, "secrets": []}
    status, env = await put(client, REPO_ENV, {"vars": {}})
    assert (status, env) == (200, EMPTY)
    assert await get(client, REPO_ENV) == (200, EMPTY)


BAD_NAMES = [
    "CI",
    "ci",
    "PATH",
    "path",
    "HOME",
    "HOBOTNICA",
    "HOBOTNICA_JOB",
    "hobotnica_secret_key",
    "GIT_COMMIT",
    "GIT_DIR",
    "git_branch",
    "1ABC",
    "A-B",
    "A B",
    "A=B",
    "",
    "X" * 129,
]


@pytest.mark.usefixtures("registered")
async def test_invalid_or_reserved_names_are_422(client: Client) -> None:
    before = {"vars": {"KEEP": "1"}, "secrets": ["KEPT"]}
    await put(client, REPO_ENV, {"vars": {"KEEP": "1"}, "secrets": {"KEPT": "x"}})
    for section in ("vars", "secrets"):
        for name in BAD_NAMES:
            status, body = await put(
                client, REPO_ENV, {section: {"OK": "1", name: "v"}}
            )
            assert status == 422, (section, name)
            [error] = body["detail"]
            assert error["loc"] == ["body", section, name]
            assert isinstance(error["message"], str)
            assert error["message"]
    assert await get(client, REPO_ENV) == (200, before)


SECRET = "zq-SEKRET-val-4242"
# Refused by request validation; each answer says what is wrong and where.
SECRET_BODIES: dict[str, tuple[bytes, list[str], str]] = {
    "too long": (
        json.dumps({"secrets": {"A": SECRET * 4000}}).encode(),
        ["body", "secrets", "A"],
        "is too long",
    ),
    "too many": (
        json.dumps({"secrets": {f"N{i}": SECRET for i in range(201)}}).encode(),
        ["body", "secrets"],
        "has too many properties",
    ),
    "not JSON": (
        b'{"secrets": {"A": "' + SECRET.encode() + b'\\x"}}',
        ["body"],
        "cannot be read as application/json",
    ),
    "secrets a string": (
        json.dumps({"secrets": SECRET}).encode(),
        ["body", "secrets"],
        "is not of type object",
    ),
    "value a list": (
        json.dumps({"secrets": {"A": [SECRET]}}).encode(),
        ["body", "secrets", "A"],
        "is not of type string",
    ),
}


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize("case", list(SECRET_BODIES))
@pytest.mark.parametrize("path", [REPO_ENV, OWNER_ENV.format("octocat")])
async def test_a_refused_env_body_is_not_echoed_back(
    client: Client, path: str, case: str
) -> None:
    body, loc, message = SECRET_BODIES[case]
    response = await client.put(
        path,
        data=body,
        headers={**auth_headers(), "Content-Type": "application/json"},
    )
    assert response.status == 422
    text = await response.text()
    assert SECRET not in text
    assert json.loads(text)["detail"] == [{"loc": loc, "message": message}]


@pytest.mark.usefixtures("registered")
async def test_other_invalid_bodies_are_422(client: Client) -> None:
    both = {"vars": {"TWICE": "a"}, "secrets": {"TWICE": "b"}}
    status, body = await put(client, REPO_ENV, both)
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "secrets", "TWICE"]
    status, body = await put(client, REPO_ENV, {"vars": {"NUL": "a\0b"}})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "vars", "NUL"]
    invalid_bodies: list[dict[str, Any]] = [
        {"vars": {"N": 1}},
        {"vars": ["A"]},
        {"secrets": "S"},
        {"other": {}},
    ]
    for invalid in invalid_bodies:
        status, body = await put(client, REPO_ENV, invalid)
        assert status == 422, invalid
        assert isinstance(body["detail"], list)
    assert await get(client, REPO_ENV) == (200, EMPTY)


@pytest.mark.usefixtures("registered")
async def test_a_name_stays_in_one_set(client: Client) -> None:
    """Setting a variable never silently drops a stored secret of that name."""
    await put(client, REPO_ENV, {"vars": {"V": "1"}, "secrets": {"S": "x"}})
    status, body = await put(client, REPO_ENV, {"vars": {"S": "plain"}})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "vars", "S"]
    status, body = await put(client, REPO_ENV, {"secrets": {"V": "hidden"}})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "secrets", "V"]
    assert await get(client, REPO_ENV) == (200, {"vars": {"V": "1"}, "secrets": ["S"]})
    # moving a name from one set to the other in one request is fine
    status, env = await put(
        client, REPO_ENV, {"vars": {"S": "plain"}, "secrets": {"V": "hidden"}}
    )
    assert (status, env) == (200, {"vars": {"S": "plain"}, "secrets": ["V"]})
    status, body = await put(
        client, OWNER_ENV.format("octocat"), {"vars": {"O": "1"}, "secrets": {}}
    )
    assert status == 200
    status, body = await put(
        client, OWNER_ENV.format("octocat"), {"secrets": {"O": "s"}}
    )
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "secrets", "O"]


@pytest.mark.usefixtures("registered")
async def test_names_that_are_allowed(client: Client) -> None:
    names = {"LANG": "C", "TZ": "UTC", "_X": "1", "a1": "2", "GITHUB_TOKEN": "3"}
    status, env = await put(client, REPO_ENV, {"vars": names})
    assert (status, env["vars"]) == (200, names)


@pytest.mark.usefixtures("registered")
async def test_read_user_reads_names_but_cannot_write(client: Client) -> None:
    await put(client, REPO_ENV, {"vars": {"A": "1"}, "secrets": {"S": "x"}})
    assert await get(client, REPO_ENV, READER_HEADERS) == (
        200,
        {"vars": {"A": "1"}, "secrets": ["S"]},
    )
    status, body = await put(client, REPO_ENV, {"vars": {}}, READER_HEADERS)
    assert status == 403
    assert "detail" in body
    assert await get(client, REPO_ENV) == (200, {"vars": {"A": "1"}, "secrets": ["S"]})


async def test_unregistered_repository_env_is_404(
    client: Client, github: FakeGitHub
) -> None:
    assert (await get(client, REPO_ENV))[0] == 404
    assert (await put(client, REPO_ENV, {"vars": {}}))[0] == 404


async def test_missing_token_is_403(client: Client, github: FakeGitHub) -> None:
    for path in (REPO_ENV, OWNER_ENV.format("octocat")):
        response = await client.put(
            path, json={"vars": {}}, headers={"X-GitHub-Username": "octocat"}
        )
        assert response.status == 403, path
        assert await response.json() == {"detail": "Not authenticated"}


# -- owner environment --------------------------------------------------------------


async def test_owner_manages_their_own_env(client: Client, github: FakeGitHub) -> None:
    path = OWNER_ENV.format("octocat")
    assert await get(client, path) == (200, EMPTY)
    status, env = await put(client, path, {"vars": {"A": "1"}, "secrets": {"S": "x"}})
    assert (status, env) == (200, {"vars": {"A": "1"}, "secrets": ["S"]})
    # owners are case-insensitive, like on GitHub
    assert await get(client, OWNER_ENV.format("OctoCat")) == (200, env)


async def test_other_users_cannot_touch_an_owner_env(
    client: Client, github: FakeGitHub
) -> None:
    path = OWNER_ENV.format("octocat")
    await put(client, path, {"vars": {"A": "1"}})
    status, body = await put(client, path, {"vars": {}}, READER_HEADERS)
    assert status == 403
    assert "detail" in body
    assert (await get(client, path, READER_HEADERS))[0] == 403
    assert await get(client, path) == (200, {"vars": {"A": "1"}, "secrets": []})
    # the reader's own env is theirs
    assert (await put(client, OWNER_ENV.format(READER), {}, READER_HEADERS))[0] == 200


async def test_organization_admins_manage_its_env(
    client: Client, github: FakeGitHub
) -> None:
    github.add_org("acme", admins=("octocat",))
    path = OWNER_ENV.format("acme")
    status, env = await put(client, path, {"vars": {"REGION": "eu"}})
    assert (status, env) == (200, {"vars": {"REGION": "eu"}, "secrets": []})
    assert await get(client, path) == (200, env)
    assert (await put(client, path, {"vars": {}}, READER_HEADERS))[0] == 403
    assert (await get(client, path, READER_HEADERS))[0] == 403
    assert await get(client, path) == (200, env)


async def test_unknown_owner_is_404(client: Client, github: FakeGitHub) -> None:
    assert (await get(client, OWNER_ENV.format("nobody-at-all")))[0] == 404


async def test_owner_env_names_are_validated(
    client: Client, github: FakeGitHub
) -> None:
    status, body = await put(client, OWNER_ENV.format("octocat"), {"vars": {"CI": "0"}})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "vars", "CI"]


# -- what jobs get ------------------------------------------------------------------


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and needle in path.read_bytes()
    ]


@pytest.fixture
def host_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the app starts: the runner snapshots the host environment."""
    monkeypatch.setenv("TZ", "Host/Zone")
    monkeypatch.setenv("LEAKY_HOST_VAR", "leaked")


@pytest.mark.integrational
@pytest.mark.usefixtures("host_env")
async def test_jobs_get_layered_env_and_masked_secrets(
    client: Client, settings: Settings, remote: GitRemote
) -> None:
    remote.commit(
        {
            "Makefile": "test:\n"
            "\t@echo TZ=$(TZ) SHARED=$(SHARED) OWNER_ONLY=$(OWNER_ONLY)"
            " LEAK=[$(LEAKY_HOST_VAR)]\n"
            "\t@echo repo secret: $$REPO_SECRET owner secret: $(OWNER_SECRET)\n"
        }
    )
    webhook = (await register(client))["webhook"]
    repo_secret = f"repo-{uuid.uuid4().hex}"
    owner_secret = f"owner-{uuid.uuid4().hex}"
    status, _ = await put(
        client,
        OWNER_ENV.format("octocat"),
        {
            "vars": {"TZ": "Owner/Zone", "SHARED": "owner", "OWNER_ONLY": "yes"},
            "secrets": {"OWNER_SECRET": owner_secret},
        },
    )
    assert status == 200
    status, _ = await put(
        client,
        REPO_ENV,
        {"vars": {"SHARED": "repository"}, "secrets": {"REPO_SECRET": repo_secret}},
    )
    assert status == 200

    sha = remote.commit({"a": "1"})
    _, job = await send_push(client, webhook, sha)
    done = await wait_for_job(client, job["number"])
    assert done["status"] == "success"
    response = await client.get(
        f"/api/repositories/octocat/hello/jobs/{job['number']}/log",
        headers=auth_headers(),
    )
    log = await response.text()
    assert "TZ=Owner/Zone SHARED=repository OWNER_ONLY=yes LEAK=[]" in log
    assert "repo secret: *** owner secret: ***" in log
    for secret in (repo_secret, owner_secret):
        assert secret not in log
        for path in (REPO_ENV, OWNER_ENV.format("octocat")):
            assert (
                secret
                not in await (await client.get(path, headers=auth_headers())).text()
            )
        # encrypted at rest: not in the database, its WAL, the logs or the clone
        data_files = [p for p in settings.data_dir.rglob("*") if p.is_file()]
        assert any(p.name.endswith("-wal") for p in data_files)
        assert files_containing(settings.data_dir, secret.encode()) == []
