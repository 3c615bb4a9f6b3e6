"""Hobotnica: self-hosted CI/CD for GitHub projects driven by a Makefile."""

from api import stdlib_distutils

__version__ = "0.1.0"

# First thing, before any module imports rororo (see stdlib_distutils).
stdlib_distutils.load()
