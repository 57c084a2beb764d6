"""Server ACL matching (m.room.server_acl), as the spec describes it."""

from __future__ import annotations

import pytest

from hs.federation.acl import server_allowed

CASES = [
    ({"allow": ["*"]}, "example.org", True),
    ({"allow": ["*"], "deny": ["evil.com"]}, "evil.com", False),
    ({"allow": ["*"], "deny": ["evil.com"]}, "evil.com:8448", False),  # the port is not matched
    ({"allow": ["*"], "deny": ["*.evil.com"]}, "sub.evil.com", False),
    ({"allow": ["*"], "deny": ["*.evil.com"]}, "evil.com", True),
    ({"allow": ["*.example.org"]}, "matrix.example.org", True),
    ({"allow": ["*.example.org"]}, "example.net", False),
    ({"allow": ["ex?mple.org"]}, "exAmple.org", True),  # case-insensitive, ? is one character
    ({}, "example.org", False),  # no allow list: nobody
    ({"allow": ["*"], "allow_ip_literals": False}, "1.2.3.4", False),
    ({"allow": ["*"], "allow_ip_literals": False}, "[::1]:8448", False),
    ({"allow": ["*"]}, "1.2.3.4:8448", True),
    ({"allow": ["*"], "deny": [5, None]}, "example.org", True),  # junk entries are ignored
    ({"allow": ["*"], "deny": ["localhost"]}, "localhost:12345", False),
]


@pytest.mark.parametrize(("acl", "server", "allowed"), CASES)
def test_server_acl(acl: dict[str, object], server: str, allowed: bool) -> None:
    assert server_allowed(acl, server) is allowed
