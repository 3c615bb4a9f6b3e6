"""The server imports Python's own distutils (3.11), not all of setuptools."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from api import stdlib_distutils

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
import api.app, distutils.util, rororo
print(json.dumps({
    "distutils": distutils.util.__file__,
    "setuptools": "setuptools" in sys.modules,
    "strtobool": distutils.util.strtobool("yes"),
}))
"""


def imported() -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: dict[str, object] = json.loads(result.stdout)
    return loaded


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="no stdlib distutils")
def test_the_app_uses_the_standard_library_distutils_without_setuptools() -> None:
    loaded = imported()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(str(loaded["distutils"])).resolve().is_relative_to(stdlib)
    assert loaded["setuptools"] is False
    assert loaded["strtobool"] == 1


def test_the_app_imports_distutils_on_any_python() -> None:
    assert imported()["strtobool"] == 1


def test_a_split_standard_library_is_left_to_the_shim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian without python3-distutils has only a stub package."""
    stub = tmp_path / "distutils"
    stub.mkdir()
    (stub / "__init__.py").write_text("")
    (stub / "version.py").write_text("")
    monkeypatch.delitem(sys.modules, "distutils", raising=False)
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    stdlib_distutils.load()
    assert "distutils" not in sys.modules
