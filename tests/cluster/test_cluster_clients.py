"""The matrix-nio flows of the core (and, where present, streams) issues, through the cluster's nginx
unchanged."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from hs.localcluster import LocalCluster
from tests.clients.test_nio_core import chat_paginate_and_late_joiner
from tests.clients.test_nio_e2ee import Target, encrypted_chat_flow

pytestmark = pytest.mark.timeout(600)


async def test_nio_core_flow_through_the_proxy(cluster: LocalCluster, tmp_path: Any) -> None:
    await chat_paginate_and_late_joiner(cluster.base_url, cluster.config.server_name, tmp_path,
                                        suffix=uuid.uuid4().hex[:6])


async def test_nio_encrypted_flow_through_the_proxy(cluster: LocalCluster, tmp_path: Any) -> None:
    await encrypted_chat_flow(Target(cluster.base_url, cluster.config.server_name), tmp_path,
                              suffix=uuid.uuid4().hex[:6])
