"""Third-party identifiers (email addresses, phone numbers) on accounts: this server has none.

Accounts register and log in with a user ID and password; there is no email or SMS sending, and the
capabilities say `m.3pid_changes` is disabled. So every account's list is empty (Element's settings
read it), and the endpoints that would start a verification answer the spec's error for a medium the
server does not support, rather than 404 as if the API did not exist.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_requester
from hs.errors import threepid_medium_not_supported


async def get_threepids(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, {"threepids": []}


def _unsupported(medium: str) -> Handler:
    async def request_token(request: web.Request) -> HandlerResult:
        raise threepid_medium_not_supported(f"This server does not verify {medium}; accounts have no third-party identifiers")

    return request_token


_EMAIL, _PHONE = "email addresses", "phone numbers"
ROUTES: list[Route] = [
    Route("GET", "/account/3pid", get_threepids, "client"),
    *(Route("POST", path, _unsupported(medium), "main")
      for path, medium in (
          ("/account/3pid/email/requestToken", _EMAIL), ("/account/3pid/msisdn/requestToken", _PHONE),
          ("/register/email/requestToken", _EMAIL), ("/register/msisdn/requestToken", _PHONE),
          ("/account/password/email/requestToken", _EMAIL), ("/account/password/msisdn/requestToken", _PHONE))),
]
