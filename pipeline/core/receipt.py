"""Receipts (SPEC §7, §13.4): the formats, the builder and the pure checks. No I/O.

`anchorlake.receipt/2` (written now) proves a contributor's rows, one contiguous leaf range, with
one range proof (SPEC §13.3); `anchorlake.receipt/1` (still read) proves each row with its own
inclusion path. `verify_rows` needs nothing but the receipt: it folds the rows to the receipt's
root; the chain (or a root the user gives) then says whether that root is the anchored one.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.jcs import canonical_bytes
from pipeline.core.manifest import Manifest
from pipeline.core.merkle import (
    InclusionProof,
    ProofError,
    leaf_hash,
    range_proof_length,
    root_from_inclusion,
    root_from_range,
)
from pipeline.core.records import ADDRESS, HEX64, tagged_json
from pipeline.core.rewards import verify_reward
from pipeline.errors import FormatError

FORMAT = "anchorlake.receipt/2"
FORMAT_V1 = "anchorlake.receipt/1"
ANCHOR_FIELDS = ("chain_id", "contract", "dataset_id", "tx_hash", "block_number")


@dataclass(frozen=True)
class Receipt:
    data: dict[str, Any]
    source: str

    @property
    def dataset(self) -> str:
        return str(self.data["dataset"])

    @property
    def seq(self) -> int:
        return int(self.data["seq"])


def build(manifest: Manifest, contributor: str, start: int, end: int, proof: Sequence[bytes],
          anchor: Mapping[str, Any] | None, reward: Mapping[str, Any] | None) -> dict[str, Any]:
    """The receipt/2 for `contributor`'s rows in the batch of `manifest`, without its rows (see
    encode): leaves [start, end) and `proof` their range proof; `anchor` is the batch's anchor
    record (or None before anchoring); `reward` the reward part (or None)."""
    return {
        "format": FORMAT,
        "dataset": manifest.data["dataset"],
        "seq": manifest.seq,
        "contributor": contributor,
        "tree_size": manifest.tree_size,
        "root": manifest.root,
        "manifest_sha256": manifest.sha256,
        "anchor": None if anchor is None else {k: anchor[k] for k in ANCHOR_FIELDS},
        "range": {"start": start, "end": end},
        "proof": [p.hex() for p in proof],
        "reward": None if reward is None else dict(reward),
    }


def encode(receipt: Mapping[str, Any], rows: bytes) -> bytes:
    """The receipt as one line of JSON, with `rows`: the JSON of its rows `{"record": {...}}`,
    comma-separated, in leaf order (written column-wise, so spliced in, not re-serialized)."""
    head = orjson.dumps(receipt)
    return head[:-1] + b',"rows":[' + rows + b"]}\n"


MAX_RECEIPT_BYTES = 256 << 20  # one receipt, unpacked, at most (about 600,000 rows of one contributor)
GZIP_FEED = 8 << 10  # gzip input decompressed at a time: what one call may unpack is 1,032 times that


def packed(line: bytes) -> bytes:
    """A receipt's line as a batch's receipts file stores it: one gzip member of its own. So the
    file is the gzip of the receipts' JSON Lines, and one contributor's byte range of it is a
    gzip file of that contributor's receipt alone."""
    from isal import isal_zlib  # only the writer needs it: readers unpack with zlib

    return isal_zlib.compress(line, 1, 31)


def gunzip(read: Callable[[int], bytes], source: str, members: int | None = None) -> Iterator[bytes]:
    """What the gzip `read` gives holds (one member or several, back to back), piece by piece;
    FormatError unless it is whole gzip with nothing after its last member, of at most `members`
    members. Input goes in small pieces, so what is left over at a member's end is never more."""
    count, pending = 0, read(GZIP_FEED)
    while True:
        member = zlib.decompressobj(31)
        count += 1
        if members is not None and count > members:
            raise FormatError(source, "(file)", f"holds more than {members} gzip member{'s' * (members != 1)}")
        while not member.eof:
            pending = pending or read(GZIP_FEED)
            if not pending:
                raise FormatError(source, "(file)", "is cut short: it ends inside a gzip member")
            try:
                piece = member.decompress(pending)
            except zlib.error as e:
                raise FormatError(source, "(file)", f"is not gzip ({e})") from None
            pending = b""
            if piece:
                yield piece
        pending = member.unused_data or read(GZIP_FEED)
        if not pending:
            return


def unpacked(data: bytes, source: str, limit: int, members: int | None = None) -> bytes:
    """What gzip `data` holds (see gunzip); FormatError unless it is at most `limit` bytes (what
    anyone can write may be a decompression bomb)."""
    out, total = [], 0
    for piece in gunzip(io.BytesIO(data).read, source, members):
        total += len(piece)
        if total > limit:
            raise FormatError(source, "(file)", f"unpacks to more than {limit:,} bytes")
        out.append(piece)
    return b"".join(out)


def lines(pieces: Iterable[bytes], source: str, limit: int) -> Iterator[tuple[int, bytes]]:
    """(number, text) of each line of the text `pieces` hold, in order, as they arrive; FormatError
    at a line over `limit` bytes, before more of it is held."""
    partial, number = bytearray(), 0

    def bounded(line: int) -> None:
        if len(partial) > limit:
            raise FormatError(source, f"line {line}", f"is over {limit:,} bytes: not one receipt")

    for piece in pieces:
        start = 0
        while (end := piece.find(b"\n", start)) >= 0:
            partial += piece[start:end]
            number += 1
            bounded(number)
            yield number, bytes(partial)
            partial.clear()
            start = end + 1
        partial += piece[start:]
        bounded(number + 1)
    if partial:
        yield number + 1, bytes(partial)


def parse(raw: bytes, source: str) -> Receipt:
    """Validate a receipt's shape (/2 or /1); raise FormatError naming the field that is wrong."""
    data = tagged_json(raw, source, (FORMAT, FORMAT_V1))
    for key, kind in (("dataset", str), ("seq", int), ("contributor", str), ("root", str), ("tree_size", int),
                      ("manifest_sha256", str), ("rows", list)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise FormatError(source, key, f"missing or not a {kind.__name__}")
    if not (0 <= data["seq"] < 2**64 and 0 <= data["tree_size"] < 2**64):
        raise FormatError(source, "seq/tree_size", "must be >= 0 and below 2^64 (a uint64 on chain)")
    if not data["rows"]:
        raise FormatError(source, "rows", "is empty: a receipt proves at least one row")
    for key in ("root", "manifest_sha256"):
        if not HEX64(data[key]):
            raise FormatError(source, key, "must be 64 lowercase hex characters")
    if not ADDRESS(data["contributor"]):
        raise FormatError(source, "contributor", "must be 0x and 40 lowercase hex digits")
    if data["format"] == FORMAT:
        _check_range(source, data)
    else:
        _check_rows_v1(source, data)
    _check_reward(source, data.get("reward"))
    anchor = data.get("anchor")
    if anchor is not None and (not isinstance(anchor, dict) or not isinstance(anchor.get("chain_id"), int)):
        raise FormatError(source, "anchor", "must be null or an object with chain_id")
    return Receipt(data, source)


def _check_range(source: str, data: dict[str, Any]) -> None:
    """receipt/2: a range of the tree, one record per leaf of it, and a proof of the right length."""
    span, size = data.get("range"), data["tree_size"]
    start, end = (span.get("start"), span.get("end")) if isinstance(span, dict) else (None, None)
    if not (isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool)
            and not isinstance(end, bool) and 0 <= start < end <= size):
        raise FormatError(source, "range", f"must be {{start, end}} with 0 <= start < end <= tree size {size}")
    if len(data["rows"]) != end - start:
        raise FormatError(source, "rows", f"holds {len(data['rows'])} rows, the range [{start}, {end}) {end - start}")
    for n, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("record"), dict):
            raise FormatError(source, f"rows[{n}].record", "must be an object")
    proof = data.get("proof")
    if not isinstance(proof, list) or not all(HEX64(p) for p in proof):
        raise FormatError(source, "proof", "must be a list of 64-hex-character hashes")
    expected = range_proof_length(size, start, end)
    if len(proof) != expected:
        raise FormatError(source, "proof", f"has {len(proof)} hashes, the proof of [{start}, {end}) in this tree has {expected}")


def _check_rows_v1(source: str, data: dict[str, Any]) -> None:
    for n, row in enumerate(data["rows"]):
        _check_row(source, f"rows[{n}]", row, data["tree_size"])
    indices = [row["leaf_index"] for row in data["rows"]]
    if len(set(indices)) != len(indices):
        repeated = next(i for i in indices if indices.count(i) > 1)
        raise FormatError(source, "rows", f"leaf {repeated} is listed more than once: each row is counted once")


def _check_row(source: str, where: str, row: Any, tree_size: int) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("record"), dict):
        raise FormatError(source, f"{where}.record", "must be an object")
    index = row.get("leaf_index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < tree_size:
        raise FormatError(source, f"{where}.leaf_index", f"must be an integer in [0, {tree_size})")
    path = row.get("path")
    if not isinstance(path, list) or not all(HEX64(p) for p in path):
        raise FormatError(source, f"{where}.path", "must be a list of 64-hex-character hashes")
    expected = path_length(index, tree_size)
    if len(path) != expected:
        raise FormatError(source, f"{where}.path", f"has {len(path)} hashes, a proof in this tree has {expected}")


def _check_reward(source: str, reward: Any) -> None:
    if reward is None:
        return
    if not isinstance(reward, dict):
        raise FormatError(source, "reward", "must be an object or null")
    _check_amount(source, "reward", reward, ("amount", "cumulative_amount"))
    previous = reward.get("previous")
    if previous is None:
        return
    if not isinstance(previous, dict) or not isinstance(previous.get("seq"), int) or isinstance(previous["seq"], bool):
        raise FormatError(source, "reward.previous", "must be null or an object with an integer seq")
    _check_amount(source, "reward.previous", previous, ("cumulative_amount",))


def _check_amount(source: str, where: str, part: dict[str, Any], amounts: tuple[str, ...]) -> None:
    """Amounts are whole decimal strings >= 0 and the proof a list of 0x-prefixed 32-byte hashes."""
    proof = part.get("proof")
    if not isinstance(proof, list) or not all(isinstance(h, str) and h[:2] == "0x" and HEX64(h[2:]) for h in proof):
        raise FormatError(source, f"{where}.proof", "must be a list of 0x-prefixed 32-byte hashes")
    for key in amounts:
        value = part.get(key)
        if not isinstance(value, str) or not value.isdigit() or not value.isascii():
            raise FormatError(source, f"{where}.{key}", "must be a whole number of base units as a decimal string")


def path_length(index: int, size: int) -> int:
    """Length of the RFC 9162 inclusion path of leaf `index` in a tree of `size` leaves."""
    length, last = 0, size - 1
    while last > 0:
        if index ^ 1 <= last:
            length += 1
        index >>= 1
        last >>= 1
    return length


def verify_rows(receipt: Receipt) -> list[str]:
    """Check the rows fold to the receipt's root and name its contributor. Failures as lines."""
    data = receipt.data
    failures = [f"{receipt.source}: row {n}: record names contributor {row['record'].get('contributor')!r}, "
                f"the receipt is for {data['contributor']}"
                for n, row in enumerate(data["rows"]) if row["record"].get("contributor") != data["contributor"]]
    failures += [f"{receipt.source}: row {n}: the record is nested more than {MAX_RECORD_DEPTH} levels deep; a "
                 "committed record is an object of values and lists of strings"
                 for n, row in enumerate(data["rows"]) if _too_deep(row["record"])]
    if failures:
        return failures
    if data["format"] == FORMAT_V1:
        return _verify_rows_v1(receipt)
    start, end = data["range"]["start"], data["range"]["end"]
    try:
        leaves = [leaf_hash(canonical_bytes(row["record"])) for row in data["rows"]]
        calculated = root_from_range(data["tree_size"], start, end, leaves, [bytes.fromhex(p) for p in data["proof"]])
    except ValueError as e:
        return [f"{receipt.source}: a record has no canonical JSON form: {e}"]
    except ProofError as e:
        return [f"{receipt.source}: rows [{start}, {end}): {e}"]
    if calculated.hex() != data["root"]:
        return [f"{receipt.source}: rows [{start}, {end}) fold to root {calculated.hex()}, expected {data['root']}"]
    return []


MAX_RECORD_DEPTH = 8  # a committed record is 2 deep (an object holding lists of strings)


def _too_deep(record: Any) -> bool:
    """Whether `record` nests deeper than MAX_RECORD_DEPTH (found without recursion: canonicalising
    a hostile record nested thousands deep would exhaust the stack)."""
    pending = [(record, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > MAX_RECORD_DEPTH:
                return True
            pending += [(v, depth + 1) for v in (value.values() if isinstance(value, dict) else value)]
    return False


def _verify_rows_v1(receipt: Receipt) -> list[str]:
    failures = []
    root = bytes.fromhex(receipt.data["root"])
    size = receipt.data["tree_size"]
    for n, row in enumerate(receipt.data["rows"]):
        where = f"{receipt.source}: row {n} (leaf {row['leaf_index']})"
        try:
            leaf = leaf_hash(canonical_bytes(row["record"]))
        except ValueError as e:
            failures.append(f"{where}: record has no canonical JSON form: {e}")
            continue
        proof = InclusionProof(row["leaf_index"], size, tuple(bytes.fromhex(p) for p in row["path"]))
        try:
            calculated = root_from_inclusion(proof, leaf)
        except ProofError as e:
            failures.append(f"{where}: {e}")
            continue
        if calculated != root:
            failures.append(f"{where}: folds to root {calculated.hex()}, expected {root.hex()}")
    return failures


def verify_reward_proof(receipt: Receipt, root: bytes) -> list[str]:
    """Check the receipt's cumulative reward folds to the rewards `root`. Failures as lines."""
    reward = receipt.data.get("reward")
    if reward is None:
        return []
    if not _folds(receipt.data["contributor"], reward, root):
        return [f"{receipt.source}: reward: cumulative amount {reward['cumulative_amount']} does not fold to "
                f"rewards root 0x{root.hex()}"]
    return []


BATCH_AMOUNT_NOT_CHECKED = ("batch amount not checked: the receipt shows no earlier cumulative amount, and a "
                            "rewards tree cannot prove there was none")


def batch_amount_checkable(receipt: Receipt) -> bool:
    """Whether the batch amount can be checked: in batch 0, or with the earlier cumulative amount."""
    reward = receipt.data.get("reward")
    return reward is None or receipt.seq == 0 or reward.get("previous") is not None


def verify_batch_amount(receipt: Receipt, previous_root: bytes | None, published_between: Sequence[int] = ()) -> list[str]:
    """Check the batch amount is the cumulative amount less the contributor's cumulative amount
    at the latest earlier batch that published rewards (`reward.previous`, folded to
    `previous_root`, the rewards root of that batch; `published_between` must be empty: the seqs
    between the two that published rewards, which the earlier amount would skip). In batch 0 it is
    the cumulative amount. Without `previous` after batch 0 nothing is checked (see
    batch_amount_checkable): absence from a rewards tree cannot be proved."""
    reward, where, seq = receipt.data.get("reward"), receipt.source, receipt.seq
    if reward is None or not batch_amount_checkable(receipt):
        return []
    previous, earlier = reward.get("previous"), 0
    if previous is not None:
        if not 0 <= previous["seq"] < seq:
            return [f"{where}: reward: the earlier cumulative amount is for batch {previous['seq']}, not one before {seq}"]
        if published_between:
            return [f"{where}: reward: the earlier cumulative amount is for batch {previous['seq']}, but batch "
                    f"{published_between[0]} published rewards after it"]
        if previous_root is None or not _folds(receipt.data["contributor"], previous, previous_root):
            shown = "is not published" if previous_root is None else f"is 0x{previous_root.hex()}"
            return [f"{where}: reward: the earlier cumulative amount {previous['cumulative_amount']} does not fold to "
                    f"the rewards root of batch {previous['seq']}, which {shown}"]
        earlier = int(previous["cumulative_amount"])
    amount, cumulative = int(reward["amount"]), int(reward["cumulative_amount"])
    if amount != cumulative - earlier:
        return [f"{where}: reward: batch amount {amount} is not the cumulative amount {cumulative} less the "
                f"earlier {earlier}"]
    return []


def _folds(contributor: str, part: Mapping[str, Any], root: bytes) -> bool:
    proof = [bytes.fromhex(p[2:]) for p in part["proof"]]
    return verify_reward(contributor, int(part["cumulative_amount"]), proof, root)
