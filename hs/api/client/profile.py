"""Placeholder: filled in by the profile endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
