"""Conformance of the project's search engine with argilla-server's own search-engine tests.

`python -m annotation.conformance` runs them; `plugin.py` is the pytest plugin that points them at
`annotation.search_engine` (it runs inside the server venv).
"""
