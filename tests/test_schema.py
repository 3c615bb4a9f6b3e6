"""The schema is valid OpenAPI 3.0 and matches the routes the app serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate_spec

from api.app import SCHEMA_PATH, create_app
from api.jobs.git import safe_ref
from api.settings import Settings

ROOT = Path(__file__).parent.parent
NOT_IN_SCHEMA = re.compile(r"^/api/(docs.*|openapi\.\{schema_format\})$")


def load_schema() -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return data


def test_schema_is_valid_openapi_3_0() -> None:
    schema = load_schema()
    validate_spec(schema)
    assert str(schema["openapi"]).startswith("3.0.")


def test_packaged_schema_is_the_top_level_one() -> None:
    assert SCHEMA_PATH.read_bytes() == (ROOT / "openapi.yaml").read_bytes()


def served_operations(app: web.Application) -> set[tuple[str, str]]:
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path") or info.get("prefix") or ""
        if not path.startswith("/api") or NOT_IN_SCHEMA.match(path):
            continue
        if route.method == "HEAD":
            continue
        served.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    return served


def declared_operations() -> set[tuple[str, str]]:
    declared = set()
    paths = load_schema()["paths"]
    assert isinstance(paths, dict)
    for path, item in paths.items():
        for method in item:
            if method in {"get", "put", "post", "delete", "patch"}:
                declared.add((method, f"/api{path}"))
    return declared


def test_every_served_route_is_declared_and_every_declared_one_served(
    tmp_path: Path,
) -> None:
    app = create_app(settings=Settings(data_dir=tmp_path, secret_key="k"))
    assert served_operations(app) == declared_operations()


def test_every_operation_declares_its_errors() -> None:
    paths = load_schema()["paths"]
    assert isinstance(paths, dict)
    for path, item in paths.items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "delete"}:
                continue
            responses = operation["responses"]
            if operation.get("security") != []:
                assert {"403", "422", "502"} <= set(responses), (method, path)


def branch_name_matches(value: str) -> bool:
    """``value`` against the schema's BranchName (pattern and lengths)."""
    branch = BRANCH_NAME
    return (
        branch["minLength"] <= len(value) <= branch["maxLength"]
        and re.search(branch["pattern"], value) is not None
    )


BRANCH_NAME = load_schema()["components"]["schemas"]["BranchName"]  # type: ignore[index]
REF_SAMPLES = [
    *["main", "feature/x-1", "v1.0.2", "refs/tags/v1", "a@b", "a+b", "x" * 255],
    *["", "+main", "-rf", "@", "a.lock/b", "a.lock", "a/.b", "a..b", "a//b"],
    *["/a", "a/", "a.", ".a", "a@{1}", "a b", "a~1", "a\\b", "x" * 256],
]


@pytest.mark.parametrize("ref", REF_SAMPLES)
def test_branch_name_in_the_schema_is_what_the_runner_accepts(ref: str) -> None:
    assert branch_name_matches(ref) == safe_ref(ref)


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("ab+-@./{}~:lock \\\x7f"), max_size=12))
def test_branch_name_agrees_with_the_runner_on_any_text(ref: str) -> None:
    assert branch_name_matches(ref) == safe_ref(ref)
