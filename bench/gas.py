"""Benchmark: gas per anchor on a real anvil, for trees of 10 rows to 10 million.

    .venv/bin/python bench/gas.py

Anchors seq 0..5 of one dataset with tree sizes from 10 to 10,000,000 and prints the gas used by
each. Target: at most 120,000 gas, the same whatever the tree size (only a root, a size and a
manifest hash go on chain). The first anchor of a dataset costs more: it creates the dataset's
nextSeq slot.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from anchoring.batch_anchor import anchor_batch  # noqa: E402
from anchoring.chain import Chain  # noqa: E402
from pipeline.config import DEVNET_KEYS  # noqa: E402
from pipeline.devnet import Anvil  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gas-") as tmp:
        node = Anvil(Path(tmp)).start()
        try:
            chain = Chain(node.url, DEVNET_KEYS["admin"])
            address = chain.deploy("BatchAnchor", chain.address, chain.address)
            dataset = hashlib.sha256(b"bench").digest()
            used = []
            for seq, size in enumerate([10, 1_000, 100_000, 1_000_000, 10_000_000, 10, 10_000_000]):
                root = hashlib.sha256(f"root{seq}".encode()).digest()
                manifest = hashlib.sha256(f"manifest{seq}".encode()).digest()
                record = anchor_batch(chain, address, dataset, seq, root, size, manifest)
                gas = chain.w3.eth.get_transaction_receipt(record.tx_hash)["gasUsed"]
                used.append(gas)
                print(f"seq {seq}: tree size {size:>10,}: {gas:,} gas" + ("  (first anchor of the dataset)" if seq == 0 else ""))
            later = used[1:]
            print(f"first anchor {used[0]:,} gas; later anchors {min(later):,}-{max(later):,} gas "
                  f"(target <= 120,000, independent of tree size)")
        finally:
            node.stop()


if __name__ == "__main__":
    main()
