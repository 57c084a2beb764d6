"""(Being built: see issue 14.)"""

from __future__ import annotations

from hs.api.base import Route

ROUTES: list[Route] = []
