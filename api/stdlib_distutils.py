"""Python's own ``distutils`` on Python 3.11, not setuptools' replacement.

rororo and openapi-core 0.13 import ``distutils.util.strtobool``. With
setuptools installed (rororo's openapi-spec-validator needs its
``pkg_resources``), the ``distutils-precedence.pth`` shim answers that import
with ``setuptools._distutils``, which imports all of setuptools first: about
5 MB of resident memory for one small function. Python 3.11 still ships
``distutils``; loading it straight from the standard library, before anything
else imports it, skips the shim. Python 3.12+ has no ``distutils`` of its own,
so there the shim stays in charge.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import warnings


def load() -> None:
    if sys.version_info >= (3, 12) or "distutils" in sys.modules:
        return
    stdlib = sysconfig.get_paths()["stdlib"]
    # Debian ships distutils apart (python3-distutils); without it only a
    # stub is there, and the shim has to serve.
    if not os.path.isfile(os.path.join(stdlib, "distutils", "util.py")):
        return
    # PathFinder directly: meta path finders (the shim) are not asked.
    spec = importlib.machinery.PathFinder.find_spec("distutils", [stdlib])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["distutils"] = module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PEP 632
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["distutils"]
            raise
