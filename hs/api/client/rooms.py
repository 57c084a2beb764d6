"""Placeholder: filled in by the rooms endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
