"""Placeholder: filled in by the sync endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
