# -*- test-case-name: tests.test_admin -*-
"""The admin API: certificate store operations, reload, health and metrics."""
