"""Math word-problem templates with worked solutions, exact answers and the mistakes students make.

Every template is a sampler (random slot values), a question, a check and a solver. The solver
writes the worked solution step by step in exact arithmetic (`fractions.Fraction`); asked for a
mistake kind, the same solver writes the solution a student making that mistake would write, so
correct and wrong solutions share one style and differ only where the mistake is.

The check is a separate statement of the answer, an equation in `x` over the slot values (for an
equation template: the equation itself, so the answer is checked by substitution). It is
evaluated by a small arithmetic interpreter (`evaluate`), independently of the solver; a solver
whose answer fails its check is a bug and raises.

Mistake kinds (`KINDS`):

- off_by_one: the answer is one off; for counting templates the fence-post error (the gaps
  instead of the posts, `b - a` instead of `b - a + 1`), elsewhere a slip in the last step (+1).
- wrong_operation: one step uses the wrong operation (adds instead of multiplying, subtracts
  instead of dividing, adds a percentage back instead of dividing by what is left).
- sign_error: a sign is lost (a term moved across `=` without changing sign, brackets removed
  after a minus without flipping the signs inside, a decrease added).
- forgotten_step: a step is left out (the discount instead of the new price, the minutes not
  converted to hours, the division at the end of an equation).
- order_of_operations: worked left to right instead of multiplying first.
- wrong_factor: a wrong power of ten or conversion factor (÷ 10 for a percentage, 100 metres in a
  kilometre, 100 minutes in an hour).
"""

from __future__ import annotations

import ast
import json
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

KINDS = ("off_by_one", "wrong_operation", "sign_error", "forgotten_step", "order_of_operations", "wrong_factor")
ANSWER_DECIMALS = 2  # a gold answer is exact with at most this many decimals
EXACT_DECIMALS = 4  # other values are shown exactly up to this many decimals, else rounded

Params = dict[str, Any]  # a template's slot values: ints and strings, JSON as they are

NAMES = (
    "Ana", "Ben", "Chloe", "Dev", "Ella", "Farid", "Grace", "Hiro", "Iris", "Jamal",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Ravi", "Sofia", "Tom",
)  # fmt: skip


# --- numbers -------------------------------------------------------------------------------------


def _decimal(scaled: int, places: int) -> str:
    """`scaled / 10**places` written out, e.g. (-125, 2) -> '-1.25'."""
    digits = str(abs(scaled)).rjust(places + 1, "0")
    whole, frac = digits[: len(digits) - places], digits[len(digits) - places :]
    text = f"{whole}.{frac}".rstrip("0").rstrip(".") if places else whole
    return f"-{text}" if scaled < 0 and text.strip("0.") else text


def decimal_places(value: Fraction) -> int | None:
    """How many decimals `value` needs to be written exactly, or None if its decimals never end."""
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
        if places > 2 * value.denominator:  # a terminating fraction ends within log2(denominator) places
            return None
    return places


def fmt(value: Fraction | int) -> str:
    """The canonical way every number is written: '14', '-2.5', '0.0035'.

    Values that are not exact within `EXACT_DECIMALS` decimals (only mistakes produce them) are
    rounded the way a student would write them: 2 decimals, or 4 below 1 so they do not vanish.
    """
    value = Fraction(value)
    places = decimal_places(value)
    if places is not None and places <= EXACT_DECIMALS:
        return _decimal(int(value * 10**places), places)
    places = 2 if abs(value) >= 1 else 4
    return _decimal(round(value * 10**places), places)


def term(value: Fraction | int) -> str:
    """A number as an operand: negative numbers in brackets, `5 - (-3)`."""
    text = fmt(value)
    return f"({text})" if text.startswith("-") else text


def plus(a: Fraction | int, b: Fraction | int) -> str:
    """`a + b` with the sign of b folded in: `9 - 3` rather than `9 + (-3)`."""
    return f"{fmt(a)} - {fmt(-b)}" if b < 0 else f"{fmt(a)} + {fmt(b)}"


def linear(coefficient: int, constant: int) -> str:
    """`3x - 5`, `x + 2`, `4x`: one side of a linear equation."""
    x = "x" if coefficient == 1 else f"{coefficient}x"
    if constant == 0:
        return x
    return f"{x} - {-constant}" if constant < 0 else f"{x} + {constant}"


def money(value: Fraction | int) -> str:
    """A price in a question: `$12` or `$12.50`."""
    value = Fraction(value)
    return f"${fmt(value)}" if value.denominator == 1 else f"${float(value):.2f}"


# --- the check interpreter -------------------------------------------------------------------------

_BINARY: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate(expression: str, x: Fraction) -> Fraction | bool:
    """Evaluate `+ - * /`, brackets, decimal literals, `x` and one `==` in exact arithmetic.

    >>> evaluate("3*x + -5 == 16", Fraction(7))
    True
    """

    def value(node: ast.expr) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))  # the literal as written: 0.1 is 1/10, not the nearest float
        if isinstance(node, ast.Name) and node.id == "x":
            return x
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"unsupported in a check: {ast.unparse(node)!r}")

    tree = ast.parse(expression, mode="eval").body
    if isinstance(tree, ast.Compare):
        if len(tree.ops) != 1 or not isinstance(tree.ops[0], ast.Eq):
            raise ValueError(f"a check compares with one ==: {expression!r}")
        return value(tree.left) == value(tree.comparators[0])
    return value(tree)


# --- solutions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One line of a worked solution: `label: expr = value` (no value for a rewriting step)."""

    label: str
    expr: str
    value: Fraction | None = None

    def text(self) -> str:
        return f"{self.label}: {self.expr}" + ("" if self.value is None else f" = {fmt(self.value)}")


@dataclass(frozen=True)
class Solution:
    """A worked solution; its answer is the value of its last step."""

    steps: tuple[Step, ...]

    @property
    def value(self) -> Fraction:
        last = self.steps[-1].value
        if last is None:
            raise ValueError("a solution ends with a computed step")
        return last

    @property
    def answer(self) -> str:
        return fmt(self.value)

    @property
    def text(self) -> str:
        return "\n".join([*(step.text() for step in self.steps), f"The answer is {self.answer}."])

    def slipped(self, delta: int = 1) -> Solution:
        """The same working with the last result off by `delta` (the generic off-by-one slip)."""
        last = self.steps[-1]
        return Solution((*self.steps[:-1], Step(last.label, last.expr, self.value + delta)))


class Work:
    """Collects the steps of a solution; `step` returns the value so the next step can use it."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def step(self, label: str, expr: str, value: Fraction | int) -> Fraction:
        self.steps.append(Step(label, expr, Fraction(value)))
        return Fraction(value)

    def note(self, label: str, expr: str) -> None:
        self.steps.append(Step(label, expr))

    def done(self) -> Solution:
        return Solution(tuple(self.steps))


Solver = Callable[[Params, str | None], Solution]


@dataclass(frozen=True)
class Template:
    """A problem pattern. `kinds` are the mistakes `solve` writes itself; every template also has
    off_by_one (if not in `kinds`, the generic slip of the correct solution's last step)."""

    name: str
    tier: str
    topic: str
    kinds: tuple[str, ...]
    check: Callable[[Params], str]  # the answer's equation in x for these slot values
    question: Callable[[Params], str]
    sample: Callable[[random.Random], Params]
    solve: Solver

    @property
    def mistake_kinds(self) -> tuple[str, ...]:
        """All mistake kinds of this template, in `KINDS` order."""
        return tuple(kind for kind in KINDS if kind in self.kinds or kind == "off_by_one")

    def solution(self, params: Params, mistake: str | None = None) -> Solution:
        if mistake is not None and mistake not in self.mistake_kinds:
            raise ValueError(f"{self.name} has no mistake {mistake!r}")
        if mistake == "off_by_one" and mistake not in self.kinds:
            return self.solve(params, None).slipped()
        return self.solve(params, mistake)


@dataclass(frozen=True)
class Problem:
    """One question with its checked answer, worked solution and worked wrong solutions by kind."""

    template: Template
    params: Params
    question: str
    solution: Solution
    mistakes: dict[str, Solution]

    @property
    def answer(self) -> str:
        return self.solution.answer

    def row(self) -> dict[str, str]:
        """The JSONL row (without id). `params` is a JSON string so every row has the same column types."""
        return {
            "question": self.question,
            "answer": self.answer,
            "solution": self.solution.text,
            "difficulty": self.template.tier,
            "topic": self.template.topic,
            "template": self.template.name,
            "params": json.dumps(self.params, sort_keys=True),
        }


class CheckFailed(AssertionError):
    """A template's solver disagrees with its check: a bug in the template, never bad luck."""


def verify_answer(template: Template, params: Params, answer: Fraction) -> bool:
    """Does `answer` satisfy the template's check for these slot values?"""
    return evaluate(template.check(params), answer) is True


def make_problem(template: Template, params: Params) -> Problem | None:
    """Build and verify a problem; None if these slot values give no usable one.

    Usable: the answer is exact within `ANSWER_DECIMALS` decimals. A mistake is kept only if its
    answer, as written, differs from the correct one and is not a tiny value rounded to 0.
    """
    solution = template.solution(params)
    places = decimal_places(solution.value)
    if places is None or places > ANSWER_DECIMALS:
        return None
    if not verify_answer(template, params, solution.value):
        raise CheckFailed(f"{template.name} {params}: the solution {solution.answer} fails `{template.check(params)}`")
    mistakes = {}
    for kind in template.mistake_kinds:
        wrong = template.solution(params, kind)
        if wrong.answer != solution.answer and (wrong.answer != "0" or wrong.value == 0):
            mistakes[kind] = wrong
    return Problem(template, params, template.question(params), solution, mistakes)


# --- the templates ----------------------------------------------------------------------------------
# Each solver writes the correct solution, and where `mistake` names one of its kinds, that mistake.


def _add_sub(p: Params, mistake: str | None) -> Solution:
    w = Work()
    s = w.step("Add the first two numbers", f"{p['a']} + {p['b']}", p["a"] + p["b"])
    if mistake == "wrong_operation":
        w.step("Then add the third", f"{fmt(s)} + {p['c']}", s + p["c"])
    else:
        w.step("Then subtract the third", f"{fmt(s)} - {p['c']}", s - p["c"])
    return w.done()


def _sample_add_sub(rng: random.Random) -> Params:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    return {"a": a, "b": b, "c": rng.randint(11, a + b - 1)}


def _percent_of(p: Params, mistake: str | None) -> Solution:
    w = Work()
    divisor = 10 if mistake == "wrong_factor" else 100
    w.step(f"{p['p']}% of {p['n']}", f"{p['n']} × {p['p']} ÷ {divisor}", Fraction(p["n"] * p["p"], divisor))
    return w.done()


def _eq_add(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b = p["a"], p["b"]
    if mistake == "sign_error":
        w.step(f"Subtract {a} from both sides", f"x = {plus(b, a)}", b + a)
    else:
        w.step(f"Subtract {a} from both sides", f"x = {plus(b, -a)}", b - a)
    return w.done()


def _eq_mul(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b = p["a"], p["b"]
    if mistake == "wrong_operation":
        w.step(f"Subtract {a} from both sides", f"x = {plus(b, -a)}", b - a)
    else:
        w.step(f"Divide both sides by {a}", f"x = {fmt(b)} ÷ {a}", Fraction(b, a))
    return w.done()


# (singular big unit, plural big unit, plural small unit, factor, a wrong factor students use)
UNITS = (
    ("kilometre", "kilometres", "metres", 1000, 100),
    ("kilogram", "kilograms", "grams", 1000, 100),
    ("litre", "litres", "millilitres", 1000, 100),
    ("metre", "metres", "centimetres", 100, 10),
    ("hour", "hours", "minutes", 60, 100),
    ("minute", "minutes", "seconds", 60, 100),
    ("day", "days", "hours", 24, 12),
)


def _unit(p: Params) -> tuple[str, str, str, int, int]:
    return UNITS[p["unit"]]


def _sample_convert(rng: random.Random) -> Params:
    # quarters: every factor is a multiple of 4, so the amount in the small unit is whole
    return {"unit": rng.randrange(len(UNITS)), "v": fmt(Fraction(rng.randint(1, 80), 4))}


def _convert_up(p: Params, mistake: str | None) -> Solution:
    one, _, small, factor, wrong = _unit(p)
    v = Fraction(p["v"])
    w = Work()
    if mistake == "wrong_factor":
        w.step(f"At {wrong} {small} per {one}", f"{p['v']} × {wrong}", v * wrong)
    elif mistake == "wrong_operation":
        w.step(f"At {factor} {small} per {one}", f"{p['v']} ÷ {factor}", v / factor)
    else:
        w.step(f"At {factor} {small} per {one}", f"{p['v']} × {factor}", v * factor)
    return w.done()


def _convert_down(p: Params, mistake: str | None) -> Solution:
    one, _, small, factor, wrong = _unit(p)
    amount = Fraction(p["v"]) * factor  # the question gives the amount in the small unit
    w = Work()
    if mistake == "wrong_factor":
        w.step(f"At {wrong} {small} per {one}", f"{fmt(amount)} ÷ {wrong}", amount / wrong)
    elif mistake == "wrong_operation":
        w.step(f"At {factor} {small} per {one}", f"{fmt(amount)} × {factor}", amount * factor)
    else:
        w.step(f"At {factor} {small} per {one}", f"{fmt(amount)} ÷ {factor}", amount / factor)
    return w.done()


# (plural item, price range in dollars), (extra item, price range)
SHOP_ITEMS = (("notebooks", (2, 9)), ("pens", (1, 4)), ("apples", (1, 3)), ("tickets", (5, 15)), ("mugs", (4, 12)))
EXTRAS = (("bag", (1, 5)), ("card", (2, 6)), ("box", (3, 8)), ("poster", (4, 10)))


def _sample_shopping(rng: random.Random) -> Params:
    item, (low, high) = rng.choice(SHOP_ITEMS)
    extra, (elow, ehigh) = rng.choice(EXTRAS)
    return {
        "name": rng.choice(NAMES),
        "n": rng.randint(2, 9),
        "item": item,
        "price": rng.randint(low, high),
        "extra": extra,
        "extra_price": rng.randint(elow, ehigh),
    }


def _shopping(p: Params, mistake: str | None) -> Solution:
    w = Work()
    if mistake == "wrong_operation":
        cost = w.step(f"The {p['item']} cost", f"{p['n']} + {p['price']}", p["n"] + p["price"])
    else:
        cost = w.step(f"The {p['item']} cost", f"{p['n']} × {p['price']}", p["n"] * p["price"])
    if mistake != "forgotten_step":
        w.step(f"Add the {p['extra']}", f"{fmt(cost)} + {p['extra_price']}", cost + p["extra_price"])
    return w.done()


def _mixed_ops(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b, c = p["a"], p["b"], p["c"]
    if mistake == "order_of_operations":
        s = w.step("Add first", f"{a} + {b}", a + b)
        w.step("Then multiply", f"{fmt(s)} × {c}", s * c)
    else:
        m = w.step("Multiply first", f"{b} × {c}", b * c)
        w.step("Then add", f"{a} + {fmt(m)}", a + m)
    return w.done()


def _subtract_group(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b, c = p["a"], p["b"], p["c"]
    if mistake == "sign_error":
        w.step("Remove the brackets", f"{a} - {b} - {c}", a - b - c)
    else:
        d = w.step("Work out the brackets", f"{b} - {c}", b - c)
        w.step("Then subtract", f"{a} - {fmt(d)}", a - d)
    return w.done()


def _sample_subtract_group(rng: random.Random) -> Params:
    b = rng.randint(10, 60)
    return {"a": rng.randint(20, 99), "b": b, "c": rng.randint(2, b - 1)}


PRICED_ITEMS = ("jacket", "lamp", "bicycle", "kettle", "backpack", "chair", "camera", "tent")


def _percent_change(p: Params, mistake: str | None) -> Solution:
    w = Work()
    divisor = 10 if mistake == "wrong_factor" else 100
    change = w.step("The change", f"{p['price']} × {p['p']} ÷ {divisor}", Fraction(p["price"] * p["p"], divisor))
    if mistake == "forgotten_step":
        return w.done()
    up = (p["direction"] == "up") != (mistake == "sign_error")
    if up:
        w.step("The new price", f"{p['price']} + {fmt(change)}", p["price"] + change)
    else:
        w.step("The new price", f"{p['price']} - {fmt(change)}", p["price"] - change)
    return w.done()


def _eq_two_step(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b, c = p["a"], p["b"], p["c"]
    move = f"Subtract {b} from both sides" if b > 0 else f"Add {-b} to both sides"
    moved = c + b if mistake == "sign_error" else c - b
    rhs = plus(c, b) if mistake == "sign_error" else plus(c, -b)
    m = w.step(move, f"{a}x = {rhs}", moved)
    if mistake == "wrong_operation":
        w.step(f"Divide both sides by {a}", f"x = {fmt(m)} × {a}", m * a)
    elif mistake != "forgotten_step":
        w.step(f"Divide both sides by {a}", f"x = {fmt(m)} ÷ {a}", m / a)
    return w.done()


def _sample_eq_two_step(rng: random.Random) -> Params:
    a, x, b = (
        rng.randint(2, 9),
        rng.choice([v for v in range(-10, 16) if v]),
        rng.choice([v for v in range(-30, 31) if v]),
    )
    return {"a": a, "b": b, "c": a * x + b}


WORKERS = (("sells", "seats"), ("reads", "pages"), ("paints", "lockers"), ("checks", "tickets"), ("cleans", "rooms"))


def _inclusive_count(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b, noun = p["a"], p["b"], WORKERS[p["job"]][1]
    if mistake == "off_by_one":
        w.step(f"Count the {noun} from {a} to {b}", f"{b} - {a}", b - a)
    else:
        w.step(f"Count the {noun} from {a} to {b}, both ends included", f"{b} - {a} + 1", b - a + 1)
    return w.done()


def _sample_inclusive_count(rng: random.Random) -> Params:
    a = rng.randint(2, 250)
    return {"name": rng.choice(NAMES), "job": rng.randrange(len(WORKERS)), "a": a, "b": rng.randint(a + 3, a + 150)}


ROWS = (("fence", "post", "posts"), ("path", "tree", "trees"), ("street", "lamp post", "lamp posts"))


def _fence_posts(p: Params, mistake: str | None) -> Solution:
    w = Work()
    gaps = w.step("The gaps between them", f"{p['length']} ÷ {p['d']}", Fraction(p["length"], p["d"]))
    if mistake != "off_by_one":  # the fence-post error: counting the gaps
        w.step(f"One more {ROWS[p['row']][1]} than gaps", f"{fmt(gaps)} + 1", gaps + 1)
    return w.done()


def _sample_fence_posts(rng: random.Random) -> Params:
    d = rng.choice((2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25))
    return {"row": rng.randrange(len(ROWS)), "d": d, "length": d * rng.randint(3, 40)}


def _change_left(p: Params, mistake: str | None) -> Solution:
    w = Work()
    price = Fraction(p["price"])
    if mistake == "wrong_operation":
        cost = w.step(f"The {p['item']} cost", f"{p['n']} + {p['price']}", p["n"] + price)
    else:
        cost = w.step(f"The {p['item']} cost", f"{p['n']} × {p['price']}", p["n"] * price)
    if mistake != "forgotten_step":
        w.step("Money left", f"{p['money']} - {fmt(cost)}", p["money"] - cost)
    return w.done()


def _sample_change_left(rng: random.Random) -> Params:
    item, (low, high) = rng.choice(SHOP_ITEMS)
    n, price = rng.randint(2, 6), Fraction(rng.randint(2 * low, 2 * high), 2)  # whole or half dollars
    return {
        "name": rng.choice(NAMES),
        "n": n,
        "item": item,
        "price": fmt(price),
        "money": int(n * price) + rng.randint(1, 60),
    }


def _distribute_sub(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b, c, d = p["a"], p["b"], p["c"], p["d"]
    if mistake == "sign_error":
        w.step("Multiply out the brackets", f"{a} - {b} × {c} - {b} × {d}", a - b * c - b * d)
        return w.done()
    e = w.step("Work out the brackets", f"{c} - {d}", c - d)
    if mistake == "order_of_operations":
        s = w.step("Subtract", f"{a} - {b}", a - b)
        w.step("Then multiply", f"{fmt(s)} × {term(e)}", s * e)
    else:
        f = w.step("Multiply", f"{b} × {term(e)}", b * e)
        w.step("Then subtract", f"{a} - {term(f)}", a - f)
    return w.done()


def _sample_distribute_sub(rng: random.Random) -> Params:
    c = rng.randint(1, 20)
    return {
        "a": rng.randint(10, 99),
        "b": rng.randint(2, 9),
        "c": c,
        "d": rng.choice([v for v in range(1, 21) if v != c]),
    }


def _reverse_percent(p: Params, mistake: str | None) -> Solution:
    w = Work()
    q, pct = Fraction(p["q"]), p["p"]
    if mistake == "wrong_operation":
        w.step(f"Add {pct}% back", f"{p['q']} + {p['q']} × {pct} ÷ 100", q + q * pct / 100)
    elif mistake == "forgotten_step":
        w.step("The price before the discount", f"{p['q']} × 100 ÷ {pct}", q * 100 / pct)
    else:
        w.note("After the discount", f"the price is {100 - pct}% of the original")
        w.step("The price before the discount", f"{p['q']} × 100 ÷ {100 - pct}", q * 100 / (100 - pct))
    return w.done()


def _sample_reverse_percent(rng: random.Random) -> Params:
    pct = rng.choice((10, 15, 20, 25, 30, 40, 50, 60))
    original = rng.randint(20, 400)
    return {"item": rng.choice(PRICED_ITEMS), "p": pct, "q": fmt(Fraction(original * (100 - pct), 100))}


def _eq_both_sides(p: Params, mistake: str | None) -> Solution:
    w = Work()
    a, b, c, d = p["a"], p["b"], p["c"], p["d"]
    k = a - c
    x_term = "x" if c == 1 else f"{c}x"
    w.note(f"Subtract {x_term} from both sides", f"{linear(k, b)} = {d}")
    move = f"Subtract {b} from both sides" if b > 0 else f"Add {-b} to both sides"
    if mistake == "sign_error":
        m = w.step(move, f"{k}x = {plus(d, b)}", d + b)
    else:
        m = w.step(move, f"{k}x = {plus(d, -b)}", d - b)
    if mistake != "forgotten_step":
        w.step(f"Divide both sides by {k}", f"x = {fmt(m)} ÷ {k}", m / k)
    return w.done()


def _sample_eq_both_sides(rng: random.Random) -> Params:
    c, k = rng.randint(1, 5), rng.randint(2, 6)
    x, b = rng.choice([v for v in range(-9, 13) if v]), rng.choice([v for v in range(-20, 21) if v])
    return {"a": c + k, "b": b, "c": c, "d": k * x + b}


VEHICLES = ("car", "train", "bus", "cyclist", "runner", "boat")


def _speed_convert(p: Params, mistake: str | None) -> Solution:
    w = Work()
    v = Fraction(p["v"])
    if p["to"] == "m/s":
        per_hour = w.step("In metres per hour", f"{p['v']} × 1000", v * 1000)
        seconds = 60 if mistake == "wrong_factor" else 3600
        if mistake != "forgotten_step":
            w.step("In metres per second", f"{fmt(per_hour)} ÷ {seconds}", per_hour / seconds)
    else:
        seconds = 60 if mistake == "wrong_factor" else 3600
        per_hour = w.step("In metres per hour", f"{p['v']} × {seconds}", v * seconds)
        if mistake != "forgotten_step":
            w.step("In kilometres per hour", f"{fmt(per_hour)} ÷ 1000", per_hour / 1000)
    return w.done()


def _sample_speed_convert(rng: random.Random) -> Params:
    to = rng.choice(("m/s", "km/h"))
    v = 9 * rng.randint(1, 16) if to == "m/s" else rng.randint(1, 60)  # km/h in multiples of 3.6 ÷ 0.4
    return {"vehicle": rng.choice(VEHICLES), "to": to, "v": v}


def _ride_minutes(p: Params, mistake: str | None) -> Solution:
    w = Work()
    v, minutes = p["v"], p["minutes"]
    if mistake == "forgotten_step":
        w.step("Distance", f"{v} × {minutes}", v * minutes)
        return w.done()
    per_hour = 100 if mistake == "wrong_factor" else 60
    hours = w.step(f"{minutes} minutes in hours", f"{minutes} ÷ {per_hour}", Fraction(minutes, per_hour))
    if mistake == "wrong_operation":
        w.step("Distance", f"{v} ÷ {fmt(hours)}", v / hours)
    else:
        w.step("Distance", f"{v} × {fmt(hours)}", v * hours)
    return w.done()


def _sample_ride_minutes(rng: random.Random) -> Params:
    # minutes in multiples of 3, so the time in hours (k/20) and the distance are exact decimals
    return {"name": rng.choice(NAMES), "v": rng.randint(8, 30), "minutes": 3 * rng.randint(5, 60)}


STOCK = ("apples", "books", "plants", "candles", "scarves")


def _stock_left(p: Params, mistake: str | None) -> Solution:
    w = Work()
    divisor = 10 if mistake == "wrong_factor" else 100
    n = p["n"]
    sold = w.step("Sold on Monday", f"{n} × {p['p']} ÷ {divisor}", Fraction(n * p["p"], divisor))
    left = w.step("Left after Monday", f"{n} - {fmt(sold)}", n - sold)
    if mistake == "sign_error":
        w.step("Left after Tuesday", f"{fmt(left)} + {p['k']}", left + p["k"])
    elif mistake != "forgotten_step":
        w.step("Left after Tuesday", f"{fmt(left)} - {p['k']}", left - p["k"])
    return w.done()


def _sample_stock_left(rng: random.Random) -> Params:
    n, pct = 20 * rng.randint(5, 30), rng.choice((10, 15, 20, 25, 30, 40, 45, 50, 60))
    left = n - n * pct // 100
    return {"item": rng.choice(STOCK), "n": n, "p": pct, "k": rng.randint(5, left - 1)}


def _ints(**ranges: tuple[int, int]) -> Callable[[random.Random], Params]:
    """A sampler drawing each slot uniformly from its inclusive range."""
    return lambda rng: {name: rng.randint(low, high) for name, (low, high) in ranges.items()}


def _eq_mul_sample(rng: random.Random) -> Params:
    a = rng.randint(2, 12)
    return {"a": a, "b": a * rng.choice([v for v in range(-12, 21) if v])}


def _t(
    name: str,
    tier: str,
    topic: str,
    kinds: tuple[str, ...],
    check: Callable[[Params], str],
    question: Callable[[Params], str],
    sample: Callable[[random.Random], Params],
    solve: Solver,
) -> Template:
    return Template(name, tier, topic, kinds, check, question, sample, solve)


def _percent_of_sample(rng: random.Random) -> Params:
    return {"p": rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80, 90)), "n": 4 * rng.randint(5, 100)}


def _percent_change_sample(rng: random.Random) -> Params:
    return {
        "item": rng.choice(PRICED_ITEMS),
        "price": rng.randint(20, 500),
        "p": rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 50)),
        "direction": rng.choice(("up", "down")),
    }


def _speed_check(p: Params) -> str:
    return f"x * 3.6 == {p['v']}" if p["to"] == "m/s" else f"x == {p['v']} * 3.6"


def _speed_question(p: Params) -> str:
    given, wanted = ("km/h", "metres per second") if p["to"] == "m/s" else ("m/s", "kilometres per hour")
    return f"A {p['vehicle']} moves at {p['v']} {given}. What is that speed in {wanted}?"


TEMPLATES: tuple[Template, ...] = (
    # easy
    _t("add_sub", "easy", "arithmetic", ("wrong_operation",),
       lambda p: f"x == {p['a']} + {p['b']} - {p['c']}",
       lambda p: f"What is {p['a']} + {p['b']} - {p['c']}?",
       _sample_add_sub, _add_sub),
    _t("percent_of", "easy", "percentages", ("wrong_factor",),
       lambda p: f"x * 100 == {p['p']} * {p['n']}",
       lambda p: f"What is {p['p']}% of {p['n']}?",
       _percent_of_sample, _percent_of),
    _t("eq_add", "easy", "equations", ("sign_error",),
       lambda p: f"x + {p['a']} == {p['b']}",
       lambda p: f"Solve for x: x + {p['a']} = {p['b']}.",
       _ints(a=(2, 60), b=(-20, 99)), _eq_add),
    _t("eq_mul", "easy", "equations", ("wrong_operation",),
       lambda p: f"{p['a']} * x == {p['b']}",
       lambda p: f"Solve for x: {p['a']}x = {p['b']}.",
       _eq_mul_sample, _eq_mul),
    _t("convert_up", "easy", "units", ("wrong_factor", "wrong_operation"),
       lambda p: f"x / {_unit(p)[3]} == {p['v']}",
       lambda p: f"How many {_unit(p)[2]} are in {p['v']} {_unit(p)[1]}?",
       _sample_convert, _convert_up),
    _t("shopping", "easy", "word problems", ("wrong_operation", "forgotten_step"),
       lambda p: f"x == {p['n']} * {p['price']} + {p['extra_price']}",
       lambda p: f"{p['name']} buys {p['n']} {p['item']} at {money(p['price'])} each and a {p['extra']} for "
       f"{money(p['extra_price'])}. How many dollars does {p['name']} spend?",
       _sample_shopping, _shopping),
    # medium
    _t("mixed_ops", "medium", "arithmetic", ("order_of_operations",),
       lambda p: f"x == {p['a']} + {p['b']} * {p['c']}",
       lambda p: f"What is {p['a']} + {p['b']} × {p['c']}?",
       _ints(a=(10, 99), b=(3, 19), c=(3, 12)), _mixed_ops),
    _t("subtract_group", "medium", "arithmetic", ("sign_error",),
       lambda p: f"x == {p['a']} - ({p['b']} - {p['c']})",
       lambda p: f"What is {p['a']} - ({p['b']} - {p['c']})?",
       _sample_subtract_group, _subtract_group),
    _t("percent_change", "medium", "percentages", ("forgotten_step", "sign_error", "wrong_factor"),
       lambda p: f"x * 100 == {p['price']} * (100 {'+' if p['direction'] == 'up' else '-'} {p['p']})",
       lambda p: f"A {p['item']} costs {money(p['price'])}. Its price {'rises' if p['direction'] == 'up' else 'falls'} "
       f"by {p['p']}%. What is the new price in dollars?",
       _percent_change_sample, _percent_change),
    _t("eq_two_step", "medium", "equations", ("sign_error", "forgotten_step", "wrong_operation"),
       lambda p: f"{p['a']} * x + {p['b']} == {p['c']}",
       lambda p: f"Solve for x: {linear(p['a'], p['b'])} = {p['c']}.",
       _sample_eq_two_step, _eq_two_step),
    _t("convert_down", "medium", "units", ("wrong_factor", "wrong_operation"),
       lambda p: f"x * {_unit(p)[3]} == {fmt(Fraction(p['v']) * _unit(p)[3])}",
       lambda p: f"How many {_unit(p)[1]} is {fmt(Fraction(p['v']) * _unit(p)[3])} {_unit(p)[2]}?",
       _sample_convert, _convert_down),
    _t("change_left", "medium", "word problems", ("wrong_operation", "forgotten_step"),
       lambda p: f"x == {p['money']} - {p['n']} * {p['price']}",
       lambda p: f"{p['name']} has {money(p['money'])} and buys {p['n']} {p['item']} at "
       f"{money(Fraction(p['price']))} each. How many dollars does {p['name']} have left?",
       _sample_change_left, _change_left),
    _t("inclusive_count", "medium", "word problems", ("off_by_one",),
       lambda p: f"x == {p['b']} - {p['a']} + 1",
       lambda p: f"{p['name']} {WORKERS[p['job']][0]} {WORKERS[p['job']][1]} {p['a']} to {p['b']}, "
       f"including both. How many {WORKERS[p['job']][1]} is that?",
       _sample_inclusive_count, _inclusive_count),
    _t("fence_posts", "medium", "word problems", ("off_by_one",),
       lambda p: f"(x - 1) * {p['d']} == {p['length']}",
       lambda p: f"A straight {ROWS[p['row']][0]} is {p['length']} metres long, with a {ROWS[p['row']][1]} "
       f"every {p['d']} metres and one at each end. How many {ROWS[p['row']][2]} are there?",
       _sample_fence_posts, _fence_posts),
    # hard
    _t("distribute_sub", "hard", "arithmetic", ("sign_error", "order_of_operations"),
       lambda p: f"x == {p['a']} - {p['b']} * ({p['c']} - {p['d']})",
       lambda p: f"What is {p['a']} - {p['b']} × ({p['c']} - {p['d']})?",
       _sample_distribute_sub, _distribute_sub),
    _t("reverse_percent", "hard", "percentages", ("wrong_operation", "forgotten_step"),
       lambda p: f"x * (100 - {p['p']}) == {p['q']} * 100",
       lambda p: f"After a {p['p']}% discount, a {p['item']} costs {money(Fraction(p['q']))}. "
       "What was its price before the discount, in dollars?",
       _sample_reverse_percent, _reverse_percent),
    _t("eq_both_sides", "hard", "equations", ("sign_error", "forgotten_step"),
       lambda p: f"{p['a']} * x + {p['b']} == {p['c']} * x + {p['d']}",
       lambda p: f"Solve for x: {linear(p['a'], p['b'])} = {linear(p['c'], p['d'])}.",
       _sample_eq_both_sides, _eq_both_sides),
    _t("speed_convert", "hard", "units", ("forgotten_step", "wrong_factor"),
       _speed_check, _speed_question, _sample_speed_convert, _speed_convert),
    _t("ride_minutes", "hard", "word problems", ("forgotten_step", "wrong_factor", "wrong_operation"),
       lambda p: f"x * 60 == {p['v']} * {p['minutes']}",
       lambda p: f"{p['name']} cycles at {p['v']} km/h for {p['minutes']} minutes. "
       f"How many kilometres does {p['name']} ride?",
       _sample_ride_minutes, _ride_minutes),
    _t("stock_left", "hard", "word problems", ("forgotten_step", "sign_error", "wrong_factor"),
       lambda p: f"x == {p['n']} - {p['n']} * {p['p']} / 100 - {p['k']}",
       lambda p: f"A shop has {p['n']} {p['item']}. It sells {p['p']}% of them on Monday and {p['k']} more "
       f"on Tuesday. How many {p['item']} are left?",
       _sample_stock_left, _stock_left),
)  # fmt: skip
