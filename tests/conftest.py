"""Shared test set-up: fixture modules live beside the tests (tests/ is on sys.path).

Listing them here makes pytest rewrite their asserts and share their session-scoped fixtures (one Redis server,
one loaded tiny.en) across every test module.
"""

pytest_plugins = [
    "redis_server", "registry_harness", "speech_fixtures", "cluster_fixtures", "browser_fixtures",
]
