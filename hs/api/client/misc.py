"""Placeholder: filled in by the misc endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
