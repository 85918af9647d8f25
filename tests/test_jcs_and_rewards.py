"""JCS against the independent `rfc8785` package and RFC 8785 vectors; reward arithmetic;
the rewards tree against @openzeppelin/merkle-tree run under node."""

from __future__ import annotations

import json
import math
import struct
import subprocess
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.jcs import canonical_number, canonicalize
from pipeline.core.rewards import RewardsTree, amounts_for, pay_per_unit, split_proportional, verify_reward
from pipeline.errors import BadInput

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parent.parent


# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical forms.
RFC8785_NUMBERS = [
    ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"), ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"), ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"), ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"), ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"), ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize("bits,expected", RFC8785_NUMBERS)
def test_numbers_follow_rfc8785_appendix_b(bits: str, expected: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert canonical_number(value) == expected


def test_rfc8785_example_object() -> None:
    obj = {"numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
           "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/", "literals": [None, True, False]}
    assert canonicalize(obj) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')


def test_keys_sort_by_utf16_code_units() -> None:
    obj = {"\u20ac": "Euro", "\r": "CR", "\ufb33": "Hebrew", "1": "One", "\U0001f600": "Emoji", "\u0080": "Control",
           "\u00f6": "Latin"}
    assert canonicalize(obj) == rfc8785.dumps(obj).decode()
    assert list(json.loads(canonicalize(obj))) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_canonical_form_equals_the_rfc8785_package(value: object) -> None:
    assert canonicalize(value).encode() == rfc8785.dumps(value)


def test_values_json_cannot_carry_are_refused() -> None:
    for bad in (math.nan, math.inf, 2**53, "\ud800", {1: "x"}, b"bytes"):
        with pytest.raises(BadInput):
            canonicalize(bad)


def test_split_adds_up_to_the_pool_and_breaks_ties_to_the_lower_address() -> None:
    amounts = split_proportional(10, {"0xb": 1, "0xa": 1, "0xc": 1})
    assert sum(amounts.values()) == 10
    assert amounts == {"0xa": 4, "0xb": 3, "0xc": 3}
    assert split_proportional(100, {}) == {}
    assert split_proportional(7, {"0xa": 0, "0xb": 2}) == {"0xa": 0, "0xb": 7}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**30), st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 10**6), min_size=1, max_size=30))
def test_split_is_exact_and_proportional(pool: int, weights: dict[str, int]) -> None:
    amounts = split_proportional(pool, weights)
    total = sum(weights.values())
    if total == 0:
        assert amounts == {}
        return
    assert sum(amounts.values()) == pool
    for c, w in weights.items():
        floor = pool * w // total
        assert floor <= amounts[c] <= floor + 1


WEIGHTS = st.dictionaries(st.from_regex(r"0x[0-9a-f]{4}", fullmatch=True), st.integers(0, 10**6), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["proportional/1", "per_unit/1"]), st.integers(0, 10**30), WEIGHTS, st.randoms())
def test_both_rules_are_exact_permutation_invariant_and_monotone_in_weight(rule: str, amount: int,
                                                                          weights: dict[str, int], rng) -> None:
    """SPEC §13.8: proportional/1 pays exactly the pool when anyone has weight, per_unit/1 exactly
    rate x weight; the order contributors arrive in changes nothing; more weight never pays less."""
    paid = amounts_for(rule, amount, amount, weights)
    total = sum(weights.values())
    if rule == "per_unit/1":
        assert paid == {c: amount * w for c, w in weights.items() if w}
    else:
        assert sum(paid.values()) == (amount if total else 0)
    shuffled = list(weights.items())
    rng.shuffle(shuffled)
    assert amounts_for(rule, amount, amount, dict(shuffled)) == paid
    ranked = sorted(weights, key=lambda c: (weights[c], c))
    for lighter, heavier in zip(ranked, ranked[1:], strict=False):
        if weights[lighter] < weights[heavier]:
            assert paid.get(lighter, 0) <= paid.get(heavier, 0)


def test_per_unit_pays_nothing_for_no_weight_and_refuses_negatives() -> None:
    assert pay_per_unit(5, {"0xa": 0, "0xb": 3}) == {"0xb": 15}
    assert pay_per_unit(5, {}) == {}
    with pytest.raises(BadInput):
        pay_per_unit(-1, {"0xa": 1})
    with pytest.raises(BadInput):
        pay_per_unit(1, {"0xa": -1})


def test_rewards_tree_matches_openzeppelin_merkle_tree() -> None:
    values = [(f"0x{i:040x}", i * 10**18 + 7) for i in range(1, 12)]
    tree = RewardsTree.build(values)
    script = """
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");
const values = JSON.parse(process.argv[1]);
const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
const loaded = StandardMerkleTree.load(JSON.parse(process.argv[2]));
console.log(JSON.stringify({root: tree.root, loadedRoot: loaded.root,
  proof: tree.getProof(3), verified: StandardMerkleTree.verify(tree.root, ["address", "uint256"], values[3], tree.getProof(3))}));
"""
    arg_values = json.dumps([[a, str(v)] for a, v in values])
    out = subprocess.run(["node", "-e", script, arg_values, json.dumps(tree.dump())], cwd=REPO, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    assert result["root"] == "0x" + tree.root.hex()
    assert result["loadedRoot"] == "0x" + tree.root.hex()
    assert result["proof"] == ["0x" + p.hex() for p in tree.proof(3)]
    assert result["verified"] is True
    assert verify_reward(values[3][0], values[3][1], tree.proof(3), tree.root)
    assert not verify_reward(values[3][0], values[3][1] + 1, tree.proof(3), tree.root)


committed_values = st.one_of(st.none(), st.text(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1),
                             st.lists(st.text(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), committed_values, min_size=1, max_size=8))
def test_the_fast_leaf_path_is_byte_identical_to_rfc8785(row: dict) -> None:
    import hashlib

    from pipeline.core.leaf import leaf_function
    from pipeline.datasets import Column

    columns = [Column(name, "string") for name in row]  # no float column: the orjson path
    assert leaf_function(columns)(row) == hashlib.sha256(b"\x00" + rfc8785.dumps(row)).digest()
