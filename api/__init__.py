"""Hobotnica: self-hosted CI/CD for GitHub projects driven by a Makefile."""

__version__ = "0.1.0"
