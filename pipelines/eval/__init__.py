"""Evaluation: batched generation, text metrics, side-by-side model comparisons."""
