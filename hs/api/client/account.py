"""Placeholder: filled in by the account endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
