"""Placeholder: filled in by the events endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
