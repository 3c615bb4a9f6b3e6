"""Fakes of the services Hobotnica talks to, for integrational tests."""
