"""Data for every stage: where rows come from (`sources`) and how columns become training examples (`formats`)."""
