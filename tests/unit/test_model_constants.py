"""The model's bounds and codes are the contracts' own: every ``MAX_*`` bound, ``WAD``, the
``liquidate_many`` skip codes and the Lens batch, read from the ``.vy`` sources (``NAME:
constant(type) = expression``, the expression evaluated with the constants above it)."""

from __future__ import annotations

import ast
import operator
import re

import contracts
from protocol_model import wad
from protocol_model.actions import SKIP_REASONS
from protocol_model.loader import LENS_MAX_BATCH

CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*): constant\((u?int\d+)\) = ([^#\n]+)", re.M)
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
       ast.Pow: operator.pow, ast.LShift: operator.lshift}


def _eval(node: ast.AST, names: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, names)
    raise ValueError(f"not a constant expression: {ast.dump(node)}")


def constants(name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for const, _type, expr in CONSTANT.findall(contracts.source(name)):
        out[const] = _eval(ast.parse(expr.strip(), mode="eval").body, out)
    return out


def test_the_parser_reads_the_engine_constants() -> None:
    engine = constants("MarginEngine")
    assert engine["MASK32"] == 2**32 - 1 and engine["IWAD"] == 10**18    # a few read by hand
    assert len(engine) > 30


def test_model_bounds_are_the_engine_constants() -> None:
    engine = constants("MarginEngine")
    for bound in ("WAD", "MAX_MARKETS", "MAX_COLLATERALS", "MAX_ORDERS", "MAX_AMOUNT", "MAX_SIZE", "MAX_PRICE",
                  "MAX_PRICE_AGE", "MAX_TOTAL_COLLATERAL"):
        assert getattr(wad, bound) == engine[bound], bound


def test_model_skip_reasons_are_the_engine_skip_codes() -> None:
    engine = constants("MarginEngine")
    codes = {v: k.removeprefix("SKIP_").lower().replace("_", " ") for k, v in engine.items() if k.startswith("SKIP_")}
    assert engine["EXECUTED"] == 0 and 0 not in SKIP_REASONS
    assert SKIP_REASONS == codes


def test_the_lens_bounds_are_the_model_bounds() -> None:
    lens = constants("Lens")
    assert (lens["MAX_MARKETS"], lens["MAX_COLLATERALS"]) == (wad.MAX_MARKETS, wad.MAX_COLLATERALS)
    assert lens["MAX_BATCH"] == LENS_MAX_BATCH
