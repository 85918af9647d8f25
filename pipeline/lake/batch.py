"""BatchFiles: every read and write of one batch's files, checked against its manifest.

A batch is `batches/<dataset>/<seq>/` (SPEC §3) plus its receipts and its operational state.
Before the manifest exists, the committer writes data parts and artifacts through `write`; the
manifest pins each with its SHA-256. After it, every read of a pinned file is checked against
that SHA-256, and a file the manifest does not pin is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.core import manifest as manifests
from pipeline.core import receipt as receipts
from pipeline.core import records
from pipeline.core.rewards import RewardsTree
from pipeline.core.treefile import TreeFile
from pipeline.errors import AlreadyExists, CheckFailed, FormatError, NotFound
from pipeline.lake import layout
from pipeline.lake.records import create_once, read_record
from pipeline.lake.storage import Lake, hash_file

log = logging.getLogger(__name__)



def committed_seqs(lake: Lake, dataset: str) -> list[int]:
    """Seqs of the dataset's committed batches: 0, 1, … up to the first without a manifest. A
    manifest past a gap was not written by a commit (batch N is built on batch N - 1): it is
    logged and ignored, so a planted `batches/<d>/999999/manifest.json` halts nothing."""
    found = sorted(seq for seq in (layout.manifest_seq(dataset, obj.key) for obj in lake.list(layout.batches(dataset)))
                   if seq is not None)
    contiguous = 0
    while contiguous < len(found) and found[contiguous] == contiguous:
        contiguous += 1
    if contiguous < len(found):
        log.warning("dataset %s: manifests past batch %d ignored (not built on a committed batch): %s",
                    dataset, contiguous - 1, found[contiguous:contiguous + 5])
    return found[:contiguous]


def read_pinned(lake: Lake, key: str, sha256: str) -> bytes:
    """A file a manifest pins by SHA-256, read by its key in the lake and checked."""
    data = lake.read(key)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckFailed(f"{lake.uri(key)}: SHA-256 differs from the {sha256} its manifest pins")
    return data


def read_parquet(data: bytes, columns: Sequence[str] | None = None) -> Any:
    """A Parquet file's bytes as an Arrow table (single-threaded: see pyarrow's exit-time abort)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data), columns=None if columns is None else list(columns), use_threads=False)


@dataclass(frozen=True)
class Intents:
    """The saved intent of one resumable transaction (what anchoring.transactions resumes)."""

    lake: Lake
    key: str

    def load(self) -> dict[str, Any] | None:
        return read_record(self.lake, self.key, records.TX_INTENT)

    def save(self, intent: dict[str, Any]) -> None:
        self.lake.write(self.key, records.TX_INTENT.dump(intent))

    def __str__(self) -> str:
        return self.lake.uri(self.key)


class BatchFiles:
    """The files of batch `seq` of `dataset` in `lake`."""

    def __init__(self, lake: Lake, dataset: str, seq: int) -> None:
        self.lake, self.dataset, self.seq = lake, dataset, seq
        self._manifest: manifests.Manifest | None = None
        self._manifest_bytes = b""
        # Set by a commit: the writer's lease generation, and a check run before every write
        # that raises once the writer lost its lease or the batch is committed (a fenced writer).
        self.generation = 0
        self.fence: Callable[[], None] = lambda: None

    def key(self, relative: str) -> str:
        return layout.batch_file(self.dataset, self.seq, relative)

    def uri(self, relative: str) -> str:
        return self.lake.uri(self.key(relative))

    # --- the manifest: the commit point --------------------------------------------------------

    def committed(self) -> bool:
        return self._manifest is not None or self.lake.exists(self.key(layout.MANIFEST))

    def manifest(self) -> manifests.Manifest:
        """The validated manifest of this batch; raises NotFound before the batch is committed,
        CheckFailed if the file is another batch's manifest."""
        if self._manifest is None:
            raw = self.lake.read(self.key(layout.MANIFEST))
            m = manifests.parse(raw, self.uri(layout.MANIFEST))
            if (m.data["dataset"], m.seq) != (self.dataset, self.seq):  # another batch's manifest, moved here
                raise CheckFailed(f"{self.uri(layout.MANIFEST)} is the manifest of {m.data['dataset']} batch {m.seq}, "
                                  f"not of {self.dataset} batch {self.seq}")
            self._manifest, self._manifest_bytes = m, raw
        return self._manifest

    def manifest_bytes(self) -> bytes:
        """The manifest file's bytes, as validated by `manifest()`."""
        self.manifest()
        return self._manifest_bytes

    def create_manifest(self, body: dict[str, Any], seal: Callable[[str], str] | None = None) -> bool:
        """Commit: create the manifest once, after its seal (`seal(manifest sha256)` gives the MAC)
        when one is given. False if another writer committed this seq first."""
        data = manifests.serialize(body)
        if seal is not None:
            digest = hashlib.sha256(data).hexdigest()
            self.lake.write(layout.seal(self.dataset, self.seq, digest), records.SEAL.dump({
                "dataset": self.dataset, "seq": self.seq, "manifest_sha256": digest, "mac": seal(digest)}))
        try:
            self.lake.create(self.key(layout.MANIFEST), data)
            return True
        except AlreadyExists:
            return False

    def seal(self) -> str | None:
        """The MAC the commit seal of the current manifest holds, or None if it has none."""
        found = read_record(self.lake, layout.seal(self.dataset, self.seq, self.manifest().sha256), records.SEAL)
        return None if found is None else str(found["mac"])

    # --- writing before the manifest ------------------------------------------------------------
    # Every file is created once, by a conditional create, under this writer's generation name
    # (layout.generation_name): nothing under batches/ is ever rewritten, whoever stalls.

    def write(self, relative: str, data: bytes) -> dict[str, Any]:
        """Create a file of the batch; its manifest entry (path, sha256, bytes)."""
        name = layout.generation_name(relative, self.generation)
        digest = hashlib.sha256(data).hexdigest()
        self._create(self.key(name), digest, lambda key: self.lake.create(key, data))
        return {"path": name, "sha256": digest, "bytes": len(data)}

    def move_file(self, relative: str, path: Path) -> dict[str, Any]:
        """Create a file of the batch from a local file, which is gone afterwards (moved, not
        copied, where the lake is on the same file system); its manifest entry."""
        name = layout.generation_name(relative, self.generation)
        digest, size = hash_file(path)
        self._create(self.key(name), digest, lambda key: self.lake.create_moved(key, path))
        return {"path": name, "sha256": digest, "bytes": size}

    def move_private(self, path: Path) -> str:
        """Create the batch's private file of rejected records' raw text (outside batches/) from a
        local file, which is gone afterwards; its key."""
        key = layout.private(self.dataset, self.seq) + layout.generation_name(layout.REJECTED, self.generation)
        self._create(key, hash_file(path)[0], lambda k: self.lake.create_moved(k, path))
        return key

    def _create(self, key: str, digest: str, create: Callable[[str], None]) -> None:
        """Fence, then create `key` once. Finding it already there with the same bytes (a retried
        request that did land) is success; with other bytes it is refused."""
        self.fence()
        config.fault_point("batch.fenced")
        try:
            create(key)
        except AlreadyExists:
            if hashlib.sha256(self.lake.read(key)).hexdigest() != digest:
                raise CheckFailed(f"{self.lake.uri(key)} exists already with other bytes; "
                                  "a batch file is never rewritten") from None

    # --- reading pinned files -------------------------------------------------------------------

    def read(self, relative: str) -> bytes:
        """A file of the committed batch, checked against the SHA-256 its manifest pins."""
        entry = self.manifest().pinned(relative)
        if entry is None:
            raise CheckFailed(f"{self.uri(relative)} is not pinned by the manifest of batch {self.seq}")
        data = self.lake.read(self.key(relative))
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckFailed(f"{self.uri(relative)}: SHA-256 differs from the manifest's {entry['sha256']}")
        return data

    def artifact(self, plain: str) -> bytes:
        """The committed batch's artifact `plain` (layout.TREE, …) under whatever name the writer
        that committed gave it, checked against the manifest."""
        return self.read(self.artifact_path(plain))

    def artifact_path(self, plain: str) -> str:
        entry = self.manifest().artifact(plain)
        if entry is None:
            raise CheckFailed(f"the manifest of {self.dataset} batch {self.seq} pins no {plain}")
        return str(entry["path"])

    def parquet(self, relative: str, columns: Sequence[str] | None = None) -> Any:
        return read_parquet(self.read(relative), columns)

    def parts(self) -> Iterator[Any]:
        """Every data part as an Arrow table, in leaf order, each checked."""
        for entry in self.manifest().data["files"]:
            yield self.parquet(entry["path"])

    def part_bytes(self) -> Iterator[tuple[str, bytes]]:
        """(relative path, bytes) of every data part, in leaf order, each checked."""
        for entry in self.manifest().data["files"]:
            yield entry["path"], self.read(entry["path"])

    def tree(self) -> TreeFile:
        """The batch's stored Merkle tree, checked whole against the manifest."""
        data = self.artifact(layout.TREE)
        return TreeFile(lambda offset, length: data[offset:offset + length], self.uri(self.artifact_path(layout.TREE)))

    def tree_ranges(self) -> TreeFile:
        """The stored tree read with ranged reads (two per proof); unchecked, so whoever uses a
        proof from it checks it against the anchored root."""
        relative = self.artifact_path(layout.TREE)
        key = self.key(relative)
        return TreeFile(lambda offset, length: self.lake.read_range(key, offset, length), self.uri(relative))

    def rewards_tree(self) -> RewardsTree:
        """The cumulative rewards ledger over batches 0..seq."""
        return RewardsTree.load(json.loads(self.artifact(layout.REWARDS_TREE)),
                                self.uri(self.artifact_path(layout.REWARDS_TREE)))

    def rewards_rows(self) -> list[dict[str, Any]]:
        """One row per contributor of the batch: counts, weight, amount and cumulative amount."""
        return list(read_parquet(self.artifact(layout.REWARDS)).to_pylist())

    def rejections(self, contributor: str | None = None) -> list[dict[str, Any]]:
        """The batch's quarantine rows (source, line, contributor, reason, detail, …), checked
        against the manifest; only `contributor`'s when given."""
        rows = read_parquet(self.artifact(layout.QUARANTINE)).to_pylist()
        return [r for r in rows if contributor is None or r["contributor"] == contributor]

    def index(self, columns: Sequence[str]) -> Any:
        """The batch's index rows (record id, dedupe key, contributor), all its key slices, each checked."""
        import pyarrow as pa

        tables = [read_parquet(self.read(str(entry["path"])), columns) for entry in self.manifest().data["artifacts"]
                  if layout.index_slice_of(layout.plain_name(str(entry["path"]))) is not None]
        if not tables:
            raise CheckFailed(f"the manifest of {self.dataset} batch {self.seq} pins no index")
        return pa.concat_tables(tables)

    # --- chain records --------------------------------------------------------------------------

    def anchor(self) -> dict[str, Any] | None:
        """The batch's live anchor record: a re-anchoring's if there was one, else anchor.json."""
        return self.reanchor() or self.first_anchor()

    def first_anchor(self) -> dict[str, Any] | None:
        return read_record(self.lake, self.key(layout.ANCHOR), records.ANCHOR)

    def reanchor(self) -> dict[str, Any] | None:
        return read_record(self.lake, layout.anchor_current(self.dataset, self.seq), records.ANCHOR)

    def record_anchor(self, record: dict[str, Any], again: bool = False) -> None:
        """anchor.json (write-once), or the re-anchor record after a reorganisation (`again`)."""
        if again:
            self.lake.write(layout.anchor_current(self.dataset, self.seq), records.ANCHOR.dump(record))
        else:
            create_once(self.lake, self.key(layout.ANCHOR), records.ANCHOR, record)

    def pays(self) -> bool:
        """Whether the committed batch has rewards to publish: it pays something, which takes an
        accepted row (SPEC §13.8); a batch that pays nothing publishes nothing."""
        m = self.manifest()
        return int(m.data["counts"]["accepted"]) > 0 and int(m.rewards["total"]) > 0

    def rewards_publication(self) -> dict[str, Any] | None:
        """The batch's live rewards publication: a re-publication's if there was one, else
        rewards-published.json."""
        current = layout.rewards_current(self.dataset, self.seq)
        return (read_record(self.lake, current, records.REWARDS_PUBLICATION)
                or read_record(self.lake, self.key(layout.REWARDS_PUBLISHED), records.REWARDS_PUBLICATION))

    def record_rewards_publication(self, record: dict[str, Any], again: bool = False) -> None:
        """rewards-published.json (write-once), or the re-publication record after a reorganisation."""
        if again:
            self.lake.write(layout.rewards_current(self.dataset, self.seq), records.REWARDS_PUBLICATION.dump(record))
        else:
            create_once(self.lake, self.key(layout.REWARDS_PUBLISHED), records.REWARDS_PUBLICATION, record)

    def intents(self, step: str) -> Intents:
        """Where the resumable transaction `step` of this batch keeps its intent."""
        return Intents(self.lake, layout.intent(self.dataset, self.seq, step))

    # --- receipts -------------------------------------------------------------------------------

    def receipts_writer(self) -> ReceiptsWriter:
        """Where the batch's receipts files go, each moved into the lake as it is added; then
        `record_receipts` makes them the batch's receipts."""
        return ReceiptsWriter(self.lake, self.dataset, self.seq)

    def record_receipts(self, written: ReceiptsWriter, anchor_block: str | None) -> None:
        """Written after the receipts files: their offsets, then the index naming both, which means
        the batch's receipts are complete, naming the anchor included in block `anchor_block` (a
        block hash; None before anchoring)."""
        self.lake.write(layout.receipts_offsets(self.dataset, self.seq, written.name), written.offsets())
        self.lake.write(layout.receipts_index(self.dataset, self.seq), records.RECEIPTS_INDEX.dump(
            {"dataset": self.dataset, "seq": self.seq, "receipts": written.count, "offsets": written.name,
             "files": written.names} | ({} if anchor_block is None else {"anchor_block_hash": anchor_block})))

    def receipts_files(self) -> tuple[str, list[str]]:
        """(offsets name, receipts file names in leaf order) the batch's receipts index gives,
        each checked for shape: the index is in the lake, where its writers can change it."""
        key = layout.receipts_index(self.dataset, self.seq)
        index = read_record(self.lake, key, records.RECEIPTS_INDEX)
        if index is None:
            raise NotFound(f"{self.dataset} batch {self.seq} has no receipts yet")
        names = [index["offsets"], *index["files"]]
        if not all(isinstance(n, str) and layout.RECEIPTS_NAME(n) for n in names):
            raise CheckFailed(f"{self.lake.uri(key)} names {names!r}, not receipts files")
        return names[0], names[1:]

    def _offsets(self) -> Any:
        """The offsets the batch's receipts index names, checked for shape and to name only the
        files the index lists: the lake's writers can change both."""
        import pyarrow as pa
        import pyarrow.compute as pc

        name, files = self.receipts_files()
        key = layout.receipts_offsets(self.dataset, self.seq, name)
        schema = pa.schema([("contributor", pa.string()), ("file", pa.string()), ("offset", pa.int64()),
                            ("length", pa.int64())])
        try:
            table = read_parquet(self.lake.read(key)).select(schema.names).cast(schema)
        except (pa.ArrowException, KeyError, ValueError) as e:
            raise CheckFailed(f"{self.lake.uri(key)} is not a receipts offsets file ({type(e).__name__})") from None
        if table.num_rows and not pc.all(pc.is_in(table.column("file"), pa.array(files, pa.string()))).as_py():
            raise CheckFailed(f"{self.lake.uri(key)} names a receipts file its index does not")
        return table

    def receipt(self, contributor: str) -> receipts.Receipt:
        """The receipt of `contributor`, one ranged read of a receipts file; CheckFailed unless it
        is that contributor's receipt of this batch and its rows fold to the batch's root with its
        range proof (the index, the offsets and the files are in the lake)."""
        import pyarrow.compute as pc

        address = contributor.lower()
        offsets = self._offsets()
        found = offsets.filter(pc.equal(offsets.column("contributor"), address))
        if found.num_rows == 0:
            raise NotFound(f"no receipt for contributor {address} in {self.dataset} batch {self.seq}")
        name, offset, length = (found.column(c)[0].as_py() for c in ("file", "offset", "length"))
        key = layout.receipts_file(self.dataset, self.seq, name)
        if offset is None or length is None or offset < 0 or not 0 < length <= receipts.MAX_RECEIPT_BYTES:
            raise CheckFailed(f"{self.lake.uri(key)}: the offsets give {address} bytes {offset}+{length}")
        try:
            line = self.lake.read_range(key, offset, length)
        except (OSError, ValueError) as e:  # an offset past what the file system can seek to
            raise CheckFailed(f"{self.lake.uri(key)}: the offsets give {address} bytes {offset}+{length}, "
                              f"which cannot be read ({e})") from None
        source = f"{self.lake.uri(key)} ({address})"
        receipt = receipts.parse(receipts.unpacked(line, source, receipts.MAX_RECEIPT_BYTES, members=1), source)
        m = self.manifest()
        shown = (receipt.data["contributor"], receipt.dataset, receipt.seq, receipt.data["root"],
                 receipt.data["tree_size"], receipt.data["manifest_sha256"])
        if shown != (address, self.dataset, self.seq, m.root, m.tree_size, m.sha256):
            raise CheckFailed(f"{receipt.source}: the offsets point at a receipt of {shown[0]} in {shown[1]} batch "
                              f"{shown[2]} (root {shown[3]}), not {address}'s of this batch")
        problems = receipts.verify_rows(receipt)
        if problems:
            raise CheckFailed(problems[0])
        return receipt

    def receipt_contributors(self) -> list[str]:
        return self._offsets().column("contributor").to_pylist()

    def receipts_anchor(self) -> str | None:
        """The block hash of the anchor the batch's complete receipts name; None if they are
        incomplete or were written before anchoring."""
        key = layout.receipts_index(self.dataset, self.seq)
        try:
            index = read_record(self.lake, key, records.RECEIPTS_INDEX)
        except FormatError as e:  # unreadable or of an older format: the receipts are written again
            log.warning("%s: %s; the batch's receipts will be written again", self.lake.uri(key), e)
            return None
        return None if index is None else index.get("anchor_block_hash")


class ReceiptsWriter:
    """One batch's receipts as gzip JSON Lines files (a member per line), in leaf order (one file
    per worker), each named by its own SHA-256 and moved into the lake as it is added, so a
    rewrite never changes bytes a reader of an earlier index is reading; with each contributor's
    file and byte range (one gzip member)."""

    def __init__(self, lake: Lake, dataset: str, seq: int) -> None:
        self.lake, self.dataset, self.seq = lake, dataset, seq
        self.names: list[str] = []
        self.contributors: list[str] = []
        self.files: list[str] = []
        self.starts: list[int] = []
        self.lengths: list[int] = []

    def add(self, path: Path, sha256: str, contributors: list[str], lengths: list[int]) -> None:
        """Move local file `path` (SHA-256 `sha256`) into the lake: the receipts of `contributors`,
        one gzip member of a line of JSON each, of `lengths`. A file of no receipt is only removed."""
        import numpy as np

        if not contributors:
            path.unlink()
            return
        name = "receipts-" + sha256[:32]
        self.lake.move_file(layout.receipts_file(self.dataset, self.seq, name), path)
        self.names.append(name)
        self.contributors += contributors
        self.files += [name] * len(contributors)
        self.starts += np.cumsum([0, *lengths], dtype=np.int64)[:-1].tolist()
        self.lengths += lengths

    @property
    def count(self) -> int:
        return len(self.contributors)

    @property
    def name(self) -> str:
        """The offsets' name: from the files' names, in order."""
        return "receipts-" + hashlib.sha256(",".join(self.names).encode()).hexdigest()[:32]

    def offsets(self) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"contributor": pa.array(self.contributors, pa.string()),
                          "file": pa.array(self.files, pa.string()),
                          "offset": pa.array(self.starts, pa.int64()), "length": pa.array(self.lengths, pa.int64())})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()


def linked_manifests(lake: Lake, dataset: str, last: int) -> list[manifests.Manifest]:
    """The manifests of batches 0..last, read back from `last`: each must be the one its successor
    pins as `previous`, so whoever trusts `last` (its seal, its anchor) is bound to every earlier
    one. CheckFailed naming the first manifest that was rewritten."""
    found: list[manifests.Manifest] = []
    for seq in range(last, -1, -1):
        files = BatchFiles(lake, dataset, seq)
        m = files.manifest()
        pinned = found[-1].data["previous"] if found else None
        if found and (not isinstance(pinned, dict) or pinned.get("manifest_sha256") != m.sha256):
            named = pinned.get("manifest_sha256") if isinstance(pinned, dict) else pinned
            raise CheckFailed(f"{dataset} batch {seq}: {files.uri(layout.MANIFEST)} hashes to {m.sha256}, not the "
                              f"{named} that batch {seq + 1} pins as its previous manifest: the history was rewritten")
        found.append(m)
    return found[::-1]
