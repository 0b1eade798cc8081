"""The admin API: certificate store operations, reload, health and metrics."""
