"""Every check a user runs against the chain: receipts, a pulled batch, the anchors `status`
lists, a batch's rewards root. Each returns findings (lines naming what differs) or raises
CheckFailed; none prints anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core.merkle import EMPTY_ROOT, HASH_SIZE, node_hash
from pipeline.core.merkle import root as merkle_root
from pipeline.core.receipt import (
    BATCH_AMOUNT_NOT_CHECKED,
    Receipt,
    batch_amount_checkable,
    verify_batch_amount,
    verify_reward_proof,
    verify_rows,
)
from pipeline.datasets import Column, Dataset, dataset_id
from pipeline.errors import AnchorlakeError, BadInput, CheckFailed
from pipeline.lake.workers import fork_pool
from pipeline.progress import Tick, ignore

if TYPE_CHECKING:  # the lake is imported where a check reads it: offline receipt checks start fast
    from pipeline.lake.batch import BatchFiles


def connect(rpc_url: str, key: str | None = None) -> Any:
    """A connection to the chain at `rpc_url`: read-only, or signing with `key`."""
    from anchoring.chain import Chain

    return Chain(rpc_url, key)


@dataclass(frozen=True)
class ReceiptFindings:
    receipt: Receipt
    problems: list[str]
    against: str  # what the receipt was checked against, for the user
    scope: str = ""  # what the check binds the rows to, e.g. " in instructions batch 0"


@dataclass(frozen=True)
class TrustAnchors:
    """What the verifying user trusts, never taken from a receipt: the dataset's name and the
    contract addresses (from flags, the environment, or a deployments file the user names)."""

    dataset: str
    batch_anchor: str
    distributor: str | None = None


def receipt_offline(receipt: Receipt, root: bytes, tree_size: int, dataset: str | None = None) -> ReceiptFindings:
    """Rows against their paths, and the receipt's root and tree size against ones the user trusts
    (a path alone does not bind the tree size)."""
    where, data = receipt.source, receipt.data
    problems = _same_dataset(receipt, dataset) + verify_rows(receipt)
    if bytes.fromhex(data["root"]) != root:
        problems.append(f"{where}: root {data['root']} is not the given root {root.hex()}")
    if data["tree_size"] != tree_size:
        problems.append(f"{where}: tree size {data['tree_size']} is not the given tree size {tree_size}")
    unchecked = "; its reward is not checked offline" if data.get("reward") is not None else ""
    named = "" if dataset else "; the dataset and batch the receipt names are not checked offline"
    return ReceiptFindings(receipt, problems, f"the given root and tree size {tree_size} (offline){named}{unchecked}",
                           f" in {dataset}" if dataset else "")


def receipt_on_chain(receipt: Receipt, chain: Any, trust: TrustAnchors) -> ReceiptFindings:
    """Rows against their paths; root, tree size and manifest against what the user's BatchAnchor
    holds for the user's dataset; the reward's cumulative and batch amounts against the rewards
    roots of the batch and the one before in the user's RewardDistributor."""
    against = f"chain {chain.chain_id}, BatchAnchor {trust.batch_anchor}, dataset {trust.dataset}"
    relabelled = _same_dataset(receipt, trust.dataset)
    if relabelled:
        return ReceiptFindings(receipt, relabelled, against)
    rewarded, checked = _rewarded(receipt, chain, trust)
    problems = verify_rows(receipt) + _anchored(receipt, chain, trust) + rewarded
    return ReceiptFindings(receipt, problems, against + checked, f" in {receipt.dataset} batch {receipt.seq}")


def _same_dataset(receipt: Receipt, dataset: str | None) -> list[str]:
    if dataset is None or receipt.dataset == dataset:
        return []
    return [f"{receipt.source}: the receipt says dataset {receipt.dataset!r}, you are verifying {dataset!r}"]


def _anchored(receipt: Receipt, chain: Any, trust: TrustAnchors) -> list[str]:
    from anchoring.batch_anchor import read_batch

    where, data = receipt.source, receipt.data
    did = dataset_id(trust.dataset)
    anchor = data.get("anchor") or {}
    named = [(f"chain {anchor['chain_id']}", f"chain {chain.chain_id}") if "chain_id" in anchor else None,
             (f"contract {anchor['contract']}", f"contract {trust.batch_anchor.lower()}") if "contract" in anchor else None,
             (f"dataset id {anchor['dataset_id']}", f"dataset id 0x{did.hex()}") if "dataset_id" in anchor else None]
    problems = [f"{where}: the receipt names {mine}, you trust {yours}" for mine, yours in filter(None, named)
                if mine.lower() != yours.lower()]
    onchain = read_batch(chain, trust.batch_anchor, did, receipt.seq)
    if not onchain.exists:
        return problems + [f"{where}: {trust.dataset} batch {receipt.seq} is not anchored in {trust.batch_anchor}"]
    return problems + [f"{where}: {what} {mine} differs from the anchored {theirs}" for what, mine, theirs in (
        ("root", data["root"], onchain.root.hex()), ("tree size", data["tree_size"], onchain.tree_size),
        ("manifest", data["manifest_sha256"], onchain.manifest_hash.hex())) if mine != theirs]


def _rewarded(receipt: Receipt, chain: Any, trust: TrustAnchors) -> tuple[list[str], str]:
    """(problems, what the reward was checked against) for the receipt's reward part."""
    from anchoring.distributor import published_root

    where, reward, seq = receipt.source, receipt.data.get("reward"), receipt.seq
    if reward is None:
        return [], ""
    if trust.distributor is None:
        return [f"{where}: the reward was not checked: give --distributor ADDR or a --deployment file"], ""
    problems = []
    if reward.get("contract") and str(reward["contract"]).lower() != trust.distributor.lower():
        problems.append(f"{where}: the reward names contract {reward['contract']}, you trust {trust.distributor}")
    did = dataset_id(trust.dataset)
    root = published_root(chain, trust.distributor, did, seq)
    if root is None:
        return problems + [f"{where}: rewards of batch {seq} are not published in {trust.distributor}"], ""
    earlier = reward.get("previous")
    previous_root, between = None, []
    if earlier is not None and 0 <= earlier["seq"] < seq:
        previous_root = published_root(chain, trust.distributor, did, earlier["seq"])
        between = [s for s in range(earlier["seq"] + 1, seq) if published_root(chain, trust.distributor, did, s)]
    problems += verify_reward_proof(receipt, root) + verify_batch_amount(receipt, previous_root, between)
    if not batch_amount_checkable(receipt):
        batch = f"; {BATCH_AMOUNT_NOT_CHECKED}"
    elif earlier is not None:
        batch = (f", batch amount as the cumulative amount less the one under rootAt({earlier['seq']}), no rewards "
                 "published between")
    else:
        batch = ", batch amount as the cumulative amount (batch 0)"
    return problems, (f"; reward: cumulative amount against rootAt({seq}) of RewardDistributor {trust.distributor}"
                      + batch)


def batch_against_chain(files: BatchFiles, dataset: Dataset, chain: Any, address: str, tick: Tick = ignore) -> None:
    """A committed batch is what was anchored: every part's SHA-256 against the manifest, every
    leaf and the root recomputed from the rows, root, tree size and manifest hash against
    BatchAnchor. Raises CheckFailed naming what differs. `tick(rows)` as parts are recomputed."""
    verified_parts(files, dataset, tick)
    manifest_anchored(files.manifest(), dataset.dataset_id, chain, address)


def verified_parts(files: BatchFiles, dataset: Dataset, tick: Tick = ignore) -> list[bytes]:
    """The bytes of every data part of the committed batch, in leaf order, each checked against
    the SHA-256 the manifest pins, their leaves and root recomputed (in one worker process per
    core for a large batch) and found to be the manifest's root and tree size. Raises CheckFailed
    naming what differs; `tick(rows)` as each part's leaves are recomputed."""
    m = files.manifest()
    data, root, leaves = _recomputed(files, dataset, tick)
    if (root.hex(), leaves) != (m.root, m.tree_size):
        raise CheckFailed(f"batch {m.seq}: the rows recompute to root {root.hex()} over {leaves} leaves, "
                          f"the manifest says {m.root} over {m.tree_size}")
    return data


def manifest_anchored(m: Any, dataset_id: bytes, chain: Any, address: str) -> None:
    """The manifest's hash, root and tree size are what BatchAnchor at `address` holds for
    (`dataset_id`, its seq); else CheckFailed."""
    from anchoring.batch_anchor import read_batch

    onchain = read_batch(chain, address, dataset_id, m.seq)
    if not onchain.exists:
        raise CheckFailed(f"batch {m.seq} is not anchored in BatchAnchor {address}")
    for what, anchored, lake in (("manifest hash", onchain.manifest_hash.hex(), m.sha256),
                                 ("Merkle root", onchain.root.hex(), m.root), ("tree size", onchain.tree_size, m.tree_size)):
        if anchored != lake:
            raise CheckFailed(f"batch {m.seq}: the manifest differs from the anchored {what} "
                              f"(anchored {anchored}, the lake has {lake})")


def rewards_against_chain(files: BatchFiles, dataset: Dataset, chain: Any, address: str) -> None:
    """The batch's rewards root is the one published in RewardDistributor; else CheckFailed."""
    from anchoring.distributor import published_root

    rewards = files.manifest().rewards
    onchain = published_root(chain, address, dataset.dataset_id, files.seq)
    if onchain is None or onchain.hex() != rewards["root"]:
        raise CheckFailed(f"rewards root of batch {files.seq} on chain is "
                          f"{onchain.hex() if onchain else 'unpublished'}, the lake has {rewards['root']}")


def rewards_statement(files: BatchFiles, dataset: Dataset, chain: Any, trust: TrustAnchors) -> None:
    """A batch's rewards table is what was anchored and published: the manifest (which pins
    rewards.parquet and rewards-tree.json) against the anchored manifest hash, its rewards root
    against rootAt, each row's cumulative amount against the tree, and the amounts against the
    batch's total. CheckFailed naming what differs."""
    m = files.manifest()
    manifest_anchored(m, dataset.dataset_id, chain, trust.batch_anchor)
    rewards_against_chain(files, dataset, chain, str(trust.distributor))
    tree = files.rewards_tree()
    rows = files.rewards_rows()
    for row in rows:
        at = tree.position(row["contributor"])
        if at is None and int(row["cumulative_amount"]) or at is not None and \
                str(tree.values[at][1]) != row["cumulative_amount"]:
            raise CheckFailed(f"batch {m.seq}: {row['contributor']}'s cumulative amount {row['cumulative_amount']} "
                              "is not the one in the rewards tree")
    if sum(int(r["amount"]) for r in rows) != int(m.rewards["total"]):
        raise CheckFailed(f"batch {m.seq}: the rewards table's amounts do not add up to the total {m.rewards['total']}")


def audit(lake: Any, dataset: Dataset, chain: Any, trust: TrustAnchors,
          tick: Tick = ignore) -> tuple[list[int], str | None]:
    """Every committed batch in order: (the seqs found sound, the first thing that differs or None).
    `tick(rows)` as each batch's rows are recomputed."""
    from pipeline.lake.batch import BatchFiles, committed_seqs

    sound: list[int] = []
    earlier: list[Any] = []  # the manifests found sound, in seq order
    for seq in committed_seqs(lake, dataset.name):
        files = BatchFiles(lake, dataset.name, seq)
        try:
            _audit_batch(files, dataset, earlier, chain, trust, tick)
        except (CheckFailed, BadInput) as e:
            return sound, str(e)
        earlier.append(files.manifest())
        sound.append(seq)
    from anchoring.batch_anchor import next_anchor_seq

    anchored = next_anchor_seq(chain, trust.batch_anchor, dataset.dataset_id)
    if anchored > len(sound):
        return sound, f"the chain anchors {anchored} batches of {dataset.name}, the lake holds {len(sound)}"
    return sound, None


def committed_rows(lake: Any, dataset: Dataset) -> int | None:
    """The rows of every committed batch of `dataset`, as their manifests say (for progress); None
    if a manifest cannot be read (audit names it)."""
    from pipeline.lake.batch import BatchFiles, committed_seqs

    try:
        return sum(BatchFiles(lake, dataset.name, seq).manifest().tree_size for seq in committed_seqs(lake, dataset.name))
    except (CheckFailed, BadInput):
        return None


def _audit_batch(files: BatchFiles, dataset: Dataset, earlier: list[Any], chain: Any, trust: TrustAnchors,
                 tick: Tick = ignore) -> None:
    """One batch: its manifest, its link to the one before and its history root over all the
    earlier ones, every file it pins, its stored tree and rewards tree, its rows recomputed, its
    anchor and rewards root on chain."""
    from pipeline.core.manifest import history_entry
    from pipeline.lake import layout

    m = files.manifest()
    linked = None if not earlier else {"seq": earlier[-1].seq, "manifest_sha256": earlier[-1].sha256}
    if (m.data["dataset"], m.seq, m.data["previous"]) != (dataset.name, files.seq, linked):
        raise CheckFailed(f"{files.uri(layout.MANIFEST)} does not name {dataset.name} batch {files.seq} "
                          "after the manifest of the batch before it")
    if m.history is not None and m.history != history_entry([e.sha256 for e in earlier]):
        raise CheckFailed(f"{files.uri(layout.MANIFEST)}: its history root {m.history['root']} is not the root "
                          f"over the manifests of batches 0..{files.seq - 1} in the lake")
    for entry in [*m.data["files"], *m.data.get("artifacts", [])]:
        files.read(entry["path"])  # each against the SHA-256 the manifest pins
    _signatures_hold(m, dataset)
    if files.tree().root().hex() != m.root:
        raise CheckFailed(f"{files.uri(layout.TREE)} does not hold the manifest's root {m.root}")
    if files.rewards_tree().root.hex() != m.rewards["root"]:
        raise CheckFailed(f"{files.uri(layout.REWARDS_TREE)} does not give the manifest's rewards root")
    batch_against_chain(files, dataset, chain, trust.batch_anchor, tick)
    if trust.distributor is not None:
        rewards_against_chain(files, dataset, chain, trust.distributor)


def _signatures_hold(m: Any, dataset: Dataset) -> None:
    """Every signed source of the manifest: its signature recovers its signer over its SHA-256."""
    from pipeline.core.signature import holds

    for source in m.data["sources"]:
        if "signer" in source and not holds(dataset.name, source["sha256"], source.get("signature"), source["signer"]):
            raise CheckFailed(f"batch {m.seq}: the signature of source {source['key']} does not recover "
                              f"its signer {source['signer']}")


class AnchorStates:
    """The state of each batch's anchor for `status`, checked against the chain when one is reachable."""

    def __init__(self, rpc_url: str | None, batch_anchor: Callable[[Any], str]) -> None:
        """`batch_anchor(chain)` gives the BatchAnchor to check against (the configured one, or the
        lake's record once checked on chain), never the address an anchor record names."""
        self.rpc_url = rpc_url
        self.batch_anchor = batch_anchor
        self.chain: Any = None
        self.contract = ""
        self.unreachable: str | None = None
        self.exit_code = 0  # of the error that left anchors unchecked (3: the chain cannot be reached)

    def _connect(self) -> None:
        if self.unreachable is None and self.chain is None:
            try:
                if not self.rpc_url:
                    raise AnchorlakeError("no chain configured")
                chain = connect(self.rpc_url)
                self.contract = self.batch_anchor(chain)
                self.chain = chain
            except AnchorlakeError as e:
                self.unreachable, self.exit_code = str(e), e.exit_code

    def state(self, files: BatchFiles, dataset: Dataset) -> tuple[str, dict[str, Any] | None]:
        """(one line: "not anchored", "anchored in …" or "ANCHOR LOST: …"; the current anchor record)."""
        first, again = files.first_anchor(), files.reanchor()
        record = again or first
        if record is None:
            return "not anchored", None
        state = self._check(files.manifest(), dataset, record)
        if first is not None and again is not None and state.startswith("anchored"):
            state += f"; re-anchored after a reorganisation removed {first['tx_hash']}"
        return state, record

    def _check(self, m: Any, dataset: Dataset, record: dict[str, Any]) -> str:
        from anchoring.batch_anchor import read_batch

        if record["manifest_sha256"] != m.sha256:
            return (f"LAKE ALTERED: the manifest of batch {m.seq} differs from the anchored manifest hash "
                    f"{record['manifest_sha256']} (the lake's hashes to {m.sha256})")
        self._connect()
        if self.chain is None:
            return f"anchored in {record['tx_hash']} (not checked: {self.unreachable})"
        if record["chain_id"] != self.chain.chain_id:
            return f"anchored on chain {record['chain_id']} (not checked: the RPC serves chain {self.chain.chain_id})"
        if record["contract"].lower() != self.contract.lower():
            return (f"ANCHOR LOST: the anchor record names BatchAnchor {record['contract']}, the deployment's is "
                    f"{self.contract}")
        onchain = read_batch(self.chain, self.contract, dataset.dataset_id, m.seq)
        if not onchain.exists or self.chain.block_hash(int(record["block_number"])) != record["block_hash"]:
            return (f"ANCHOR LOST: anchor.json names tx {record['tx_hash']} in block {record['block_number']}, "
                    "which the chain no longer holds (reorganisation?)")
        if (onchain.root.hex(), onchain.manifest_hash.hex()) != (m.root, m.sha256):
            return f"ANCHOR LOST: the chain holds root {onchain.root.hex()} for this seq"
        return f"anchored in {record['tx_hash']} ({self.chain.head() - int(record['block_number']) + 1} confirmations)"


# --- recomputing a batch's leaves, one worker per core ------------------------------------------
# The parent reads each part (one read, checked against the manifest: an S3 client is not shared
# with forked children) and hands its bytes to a worker, which decodes it and builds its JSON
# records and leaf hashes column-wise, then the roots of the aligned subtrees its rows cover; the
# parent folds those into the root.

@dataclass(frozen=True)
class PartLeaves:
    """One data part's leaves: `rows`, their hashes (32 bytes each, in leaf order), and, when the
    part's first leaf `start` was known, the (size, root) of the aligned subtrees covering
    [start, start + rows), left to right."""

    start: int | None
    rows: int
    leaves: bytes
    subtrees: tuple[tuple[int, bytes], ...]


def part_leaves(data: bytes, columns: tuple[Column, ...], start: int | None) -> PartLeaves:
    """The leaves of a data part's bytes (a Parquet file) whose first leaf is `start` (None: unknown)."""
    from pipeline.lake.batch import read_parquet
    from pipeline.lake.columnar import leaf_hashes

    table = read_parquet(data)
    leaves = leaf_hashes(table, columns)
    if leaves is None:  # floats, lists or an unexpected Arrow type: the row-by-row rule
        from pipeline.core.leaf import leaf_function, record_object

        leaf = leaf_function(columns)
        leaves = [leaf(record_object(columns, row)) for row in table.to_pylist()]
    return PartLeaves(start, table.num_rows, b"".join(leaves), () if start is None else _subtrees(leaves, start))


def _recomputed(files: BatchFiles, dataset: Dataset, tick: Tick) -> tuple[list[bytes], bytes, int]:
    """(every part's bytes, the root their rows recompute to, the number of leaves)."""
    entries = files.manifest().data["files"]
    starts = _starts(entries)
    columns = dataset.committed_columns
    pool = fork_pool(len(entries), files.manifest().tree_size)
    data: list[bytes] = []
    pending: list[Any] = []
    try:
        for entry, start in zip(entries, starts, strict=True):
            data.append(files.read(entry["path"]))
            pending.append(pool.submit(part_leaves, data[-1], columns, start) if pool
                           else part_leaves(data[-1], columns, start))
        parts = []
        for item in pending:
            parts.append(item.result() if pool else item)
            tick(parts[-1].rows)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return data, _root(parts), sum(p.rows for p in parts)


def _starts(entries: list[dict[str, Any]]) -> list[int | None]:
    """Each part's first leaf, as the manifest's row counts give it (None where it gives none)."""
    if not all(isinstance(e.get("rows"), int) for e in entries):
        return [None] * len(entries)
    starts: list[int | None] = []
    at = 0
    for e in entries:
        starts.append(at)
        at += e["rows"]
    return starts


def _root(parts: list[PartLeaves]) -> bytes:
    """The root over every part's leaves: their subtrees folded when the parts are contiguous as
    the manifest said (each starting where the one before ended), else the leaves themselves."""
    at = 0
    for p in parts:
        if p.start != at:
            return merkle_root([h for q in parts for h in _split_leaves(q.leaves)])
        at += p.rows
    stack: list[tuple[int, bytes]] = []  # the compact range of [0, at): sizes strictly decreasing
    for p in parts:
        for size, hashed in p.subtrees:
            stack.append((size, hashed))
            while len(stack) > 1 and stack[-2][0] == stack[-1][0]:
                (half, left), (_, right) = stack[-2], stack[-1]
                stack[-2:] = [(2 * half, node_hash(left, right))]
    if not stack:
        return EMPTY_ROOT
    root = stack[-1][1]
    for _, left in reversed(stack[:-1]):  # RFC 9162: the largest power-of-two subtree, then the rest
        root = node_hash(left, root)
    return root


def _subtrees(leaves: list[bytes], start: int) -> tuple[tuple[int, bytes], ...]:
    """(size, root) of the largest aligned power-of-two subtrees covering leaves [start, start +
    len(leaves)), left to right: what an RFC 9162 tree over any range holding them is built from."""
    found = []
    at, n = 0, len(leaves)
    while at < n:
        position = start + at
        size = position & -position if position else 1 << n.bit_length()
        while size > n - at:
            size >>= 1
        found.append((size, merkle_root(leaves[at:at + size])))
        at += size
    return tuple(found)


def _split_leaves(blob: bytes) -> list[bytes]:
    return [blob[i:i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
