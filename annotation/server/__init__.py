"""The embedded Argilla server, in two runtimes.

In the training venv (imports nothing from argilla_server):
- `launcher.py`: `python -m annotation server start|stop|status|logs`: installs the server venv,
  starts Redis, the API and the rq worker, keeps their state in the var dir.

In the server's own venv (`var/argilla-venv`, pinned in `requirements.txt`; imports only
argilla_server, its dependencies and the standard library):
- `app.py`: what the launcher runs there (`serve`, `worker`);
- `patches.py`: every change to argilla-server's private internals, each gated to the version it was
  read from;
- `search_engine.py`: the project's search engine (SQL over Argilla's own tables, a text index, the
  annotators' queue index and counts kept by triggers), on SQLite or PostgreSQL: what differs between
  the two is in `dialects/`;
- `conformance/`: argilla-server's own search-engine tests run against that engine
  (`python -m annotation.server.conformance` starts them from the training venv).
"""
