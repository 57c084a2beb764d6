"""Placeholder: filled in by the directory endpoints."""

from hs.api.base import Route

ROUTES: list[Route] = []
