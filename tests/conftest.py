"""Shared test set-up: fixture modules live beside the tests (tests/ is on sys.path)."""

pytest_plugins = ["redis_server"]
