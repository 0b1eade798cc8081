# -*- test-case-name: tests.test_reload_unit,tests.test_store_config -*-
"""Compatibility names: the gateway moved to ``txgate.plan`` (Config -> Plan) and ``txgate.runtime``."""
from __future__ import annotations

from txgate.plan import Plan, prepare
from txgate.plan.clientauth import client_auth_signature
from txgate.plan.store import open_gateway_store, store_secret
from txgate.runtime.assemble import makeService
from txgate.runtime.facade import ServiceFacade
from txgate.runtime.gateway import GatewayService

__all__ = ["GatewayService", "Plan", "ServiceFacade", "client_auth_signature", "makeService",
           "open_gateway_store", "prepare", "store_secret"]
