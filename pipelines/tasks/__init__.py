"""Tasks: the verifiable problems the demo trains on, one folder each, beside the training stages.

A task brings its sample-data generator and checker, its verifier (what "right" means for an
answer, judged independently of any learned model) and a reward function PPO can use directly:

- `textsql`: questions about a shop database; answers are SQL, judged by executing them.
- `mathqa`: templated arithmetic word problems; answers judged by their final number.
- `shop_text`: domain prose about the same shop, for continued pretraining.

A new task is one more folder with the same parts; `pipelines.eval.verifiers` picks the judge.
"""
