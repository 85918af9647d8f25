"""Reward arithmetic and the rewards Merkle tree (SPEC §8, §9). Pure, integers only.

`split_proportional` implements rule `proportional/1`, `pay_per_unit` rule `per_unit/1`. `RewardsTree` is the OpenZeppelin
StandardMerkleTree over `(address, uint256)` leaves, so `@openzeppelin/merkle-tree` and
`MerkleProof.sol` agree with it; `dump()` is its `standard-v1` format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from sha3 import keccak_256  # type: ignore[import-untyped]

from pipeline.errors import BadInput, FormatError

ZERO_ROOT = bytes(32)


def split_proportional(pool: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split `pool` base units over contributors by integer weight.

    amount_c = floor(P*w_c/W); leftover units go one each to the largest remainders
    P*w_c mod W, ties to the lower address. Sum of amounts == pool when W > 0, else {}.
    Requires pool >= 0 and every weight >= 0.
    """
    if pool < 0:
        raise BadInput(f"pool must be >= 0, got {pool}")
    total = 0
    for contributor, weight in weights.items():
        if weight < 0:
            raise BadInput(f"weight of {contributor} is negative ({weight})")
        total += weight
    if total == 0:
        return {}
    amounts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for contributor, weight in weights.items():
        quotient, remainder = divmod(pool * weight, total)
        amounts[contributor] = quotient
        remainders.append((remainder, contributor))
    leftover = pool - sum(amounts.values())
    remainders.sort(key=lambda rc: (-rc[0], rc[1]))
    for _, contributor in remainders[:leftover]:
        amounts[contributor] += 1
    return amounts


def pay_per_unit(rate: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Rule `per_unit/1`: amount_c = rate * w_c base units, for every contributor with w_c > 0.

    Requires rate >= 0 and every weight >= 0."""
    if rate < 0:
        raise BadInput(f"rate must be >= 0, got {rate}")
    if any(weight < 0 for weight in weights.values()):
        raise BadInput("weights must be >= 0")
    return {contributor: rate * weight for contributor, weight in weights.items() if weight > 0}


def amounts_for(rule: str, pool: int, rate: int, weights: Mapping[str, int]) -> dict[str, int]:
    """The batch's amounts under `rule` (`proportional/1` or `per_unit/1`)."""
    if rule == "proportional/1":
        return split_proportional(pool, weights)
    if rule == "per_unit/1":
        return pay_per_unit(rate, weights)
    raise BadInput(f"unknown reward rule {rule!r}")


def _address_bytes(address: str) -> bytes:
    if not (isinstance(address, str) and len(address) == 42 and address[:2] in ("0x", "0X")):
        raise BadInput(f"not an address: {address!r}")
    try:
        return bytes.fromhex(address[2:])
    except ValueError:
        raise BadInput(f"not an address: {address!r}") from None


def keccak(data: bytes) -> bytes:
    # safe-pysha3's C Keccak-256: about 8x faster per call than eth_hash's pycryptodome backend,
    # which counts when a batch's rewards tree of many contributors is built or checked.
    return keccak_256(data).digest()  # type: ignore[no-any-return]


def reward_leaf(address: str, amount: int) -> bytes:
    """OpenZeppelin standard leaf: keccak256(keccak256(abi.encode(address, uint256)))."""
    if not 0 <= amount < 2**256:
        raise BadInput(f"amount {amount} does not fit uint256")
    encoded = bytes(12) + _address_bytes(address) + amount.to_bytes(32, "big")
    return keccak(keccak(encoded))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


@dataclass(frozen=True)
class RewardsTree:
    """StandardMerkleTree over `(address, uint256)` values, in OpenZeppelin's array layout."""

    values: tuple[tuple[str, int], ...]
    tree: tuple[bytes, ...]
    tree_index: tuple[int, ...]  # tree_index[i] is where values[i]'s leaf sits in `tree`

    @classmethod
    def build(cls, values: Sequence[tuple[str, int]]) -> RewardsTree:
        """Build from values in the given order (anchorlake passes them sorted by address)."""
        leaves = [(reward_leaf(a, v), i) for i, (a, v) in enumerate(values)]
        leaves.sort(key=lambda li: li[0])
        n = len(leaves)
        if n == 0:
            return cls((), (), ())
        tree: list[bytes] = [b""] * (2 * n - 1)
        tree_index = [0] * n
        for i, (leaf, value_index) in enumerate(leaves):
            position = len(tree) - 1 - i
            tree[position] = leaf
            tree_index[value_index] = position
        for i in range(len(tree) - 1 - n, -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        return cls(tuple((a.lower(), int(v)) for a, v in values), tuple(tree), tuple(tree_index))

    @property
    def root(self) -> bytes:
        """Root hash; 32 zero bytes for an empty ledger (nothing can be claimed)."""
        return self.tree[0] if self.tree else ZERO_ROOT

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {address: i for i, (address, _) in enumerate(self.values)}

    def position(self, address: str) -> int | None:
        """Where `address` sits in `values`, or None if the ledger does not hold it."""
        return self._positions.get(address.lower())

    def proof(self, value_index: int) -> list[bytes]:
        index = self.tree_index[value_index]
        proof: list[bytes] = []
        while index > 0:
            sibling = index - 1 if index % 2 == 0 else index + 1
            proof.append(self.tree[sibling])
            index = (index - 1) // 2
        return proof

    def dump(self) -> dict[str, object]:
        """OpenZeppelin `standard-v1` dump: `StandardMerkleTree.load()` reads it."""
        return {
            "format": "standard-v1",
            "leafEncoding": ["address", "uint256"],
            "tree": ["0x" + node.hex() for node in self.tree],
            "values": [
                {"value": [address, str(amount)], "treeIndex": index}
                for (address, amount), index in zip(self.values, self.tree_index, strict=False)
            ],
        }

    @classmethod
    def load(cls, data: object, source: str = "rewards tree") -> RewardsTree:
        if not isinstance(data, dict) or data.get("format") != "standard-v1":
            raise FormatError(source, "format", "expected 'standard-v1'")
        if data.get("leafEncoding") != ["address", "uint256"]:
            raise FormatError(source, "leafEncoding", "expected ['address', 'uint256']")
        try:
            values = tuple((str(v["value"][0]).lower(), int(v["value"][1])) for v in data["values"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise FormatError(source, "values", "each value must be [address, amount]") from None
        rebuilt = cls.build(values)
        if ["0x" + node.hex() for node in rebuilt.tree] != data.get("tree"):
            raise FormatError(source, "tree", "does not match its values")
        return rebuilt


def verify_reward(address: str, cumulative_amount: int, proof: Sequence[bytes], root: bytes) -> bool:
    """MerkleProof.verify: fold the leaf with sorted-pair keccak hashing."""
    node = reward_leaf(address, cumulative_amount)
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
