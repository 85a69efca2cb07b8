"""Conformance of the project's search engine with argilla-server's own search-engine tests.

`python -m annotation.server.conformance` runs them; `plugin.py` is the pytest plugin that points them at
`annotation.server.search_engine` (it runs inside the server venv).
"""
