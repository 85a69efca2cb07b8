"""The Argilla side of the loop: embedded server, dataset schemas, push/pull, aggregation, export.

Not built yet (issue "Real Argilla for annotators"). The training stages already read any data
source through `pipelines.data.sources.load_source`; this package will register the
`argilla://workspace/dataset` scheme there with `register_scheme`, and reuse
`pipelines.data.preferences.ranking_to_pairs` for its reward export.
"""
