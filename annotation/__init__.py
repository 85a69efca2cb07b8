"""The Argilla side of the loop: embedded server, dataset schemas, push/pull, aggregation, export, and the
closed human-feedback loop.

`python -m annotation server start` runs a real argilla-server 2.8.0 (own venv under the var dir,
Redis, SQLite, and `server/search_engine.py`: the project's SQLite/FTS5 search engine, registered with
Argilla's engine registry). The dataset commands (`create`, `users`, `push`, `pull`, `export`)
talk to it, or to an external Argilla named by ARGILLA_API_URL/ARGILLA_API_KEY; every read of a
server (a dataset and its kind, users, records with responses) goes through `client.py`. The training
stages read exports, or Argilla directly as `argilla://workspace/dataset` (`sources.py`); the reward
export shares `pipelines.data.preferences.ranking_to_pairs` with the reward stage. `loop` (`loop.py`,
`loop_candidates.py`, `loop_annotators.py`) sends the policy's answers back to annotators and retrains
on what they said, one round at a time, through the stages' own CLIs.
"""
