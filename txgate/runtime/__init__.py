# -*- test-case-name: tests.test_reload_unit,tests.test_embed_e2e -*-
"""The running gateway: generations built from a Plan, listening, reload, shutdown and the admin facade.

``assemble.makeService`` builds it; ``gateway.GatewayService`` owns its lifetime; ``generation``
builds the runtime objects of one Plan; ``reload`` holds the reload mechanics; ``facade`` is what
the admin API may ask of it. With worker processes: ``workers`` (the supervisor), ``supervised`` (what
the supervisor process runs), ``worker_main`` (a worker process), ``sockets`` and ``steering``.
"""
