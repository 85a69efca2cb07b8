"""Verifiable text-to-SQL demo data: a seeded shop database, templated questions with executed gold SQL,
a safe SQL executor with execution/exact match, and rule-based wrong answers for preference pairs."""

from pipelines.tasks.textsql.execute import ExecResult, execute, execution_match, normalize_sql, results_match
from pipelines.tasks.textsql.perturb import KINDS, perturbations
from pipelines.tasks.textsql.questions import TEMPLATES, TIERS, check_dataset, generate_rows, write_dataset
from pipelines.tasks.textsql.schema import SCHEMA_SQL, build_database

__all__ = [
    "KINDS",
    "SCHEMA_SQL",
    "TEMPLATES",
    "TIERS",
    "ExecResult",
    "build_database",
    "check_dataset",
    "execute",
    "execution_match",
    "generate_rows",
    "normalize_sql",
    "perturbations",
    "results_match",
    "write_dataset",
]
