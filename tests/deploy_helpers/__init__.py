"""Helpers for the deploy tests (tests/test_deploy_*.py)."""
