"""Placeholder: filled in by the admin endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
