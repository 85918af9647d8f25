"""Signed contributions (SPEC §13.7): in a `contributors: "signed"` dataset a source counts only
with a valid EIP-191 signature beside it, and only for rows naming its signer. The attacks: a
file signed by someone else naming the victim, the victim's file relabelled under the victim's
signature, an unsigned file, a signature for another dataset, a linked sidecar."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from pipeline.config import DEVNET_CONTRIBUTOR_KEY, REPO_ROOT
from pipeline.core.signature import CONTRIBUTION, message, sign_file
from pipeline.datasets import load as load_dataset
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake import layout
from pipeline.lake.storage import open_lake

from conftest import OUTSIDER_KEY

pytestmark = pytest.mark.integration
HONEST = Account.from_key(DEVNET_CONTRIBUTOR_KEY).address.lower()
ATTACKER = Account.from_key(OUTSIDER_KEY).address.lower()


def rows(contributor: str, *critiques: str) -> bytes:
    return b"".join(json.dumps({"prompt": "What is 2 + 2?", "response": "4.", "critique": c, "language": "en",
                                "consent": True, "created_at": "2026-11-20T10:00:00Z",
                                "contributor": contributor}).encode() + b"\n" for c in critiques)


def drop(lake, name: str, data: bytes, sidecar: dict | None = None) -> None:
    lake.write(f"incoming/critiques/{name}", data)
    if sidecar is not None:
        lake.write(f"incoming/critiques/{name}.sig.json", CONTRIBUTION.dump(sidecar))


def test_only_rows_of_a_validly_signed_source_naming_its_signer_are_accepted(tmp_path: Path) -> None:
    dataset = load_dataset(REPO_ROOT / "expectations", "critiques")
    lake = open_lake((tmp_path / "lake").as_uri())
    honest = rows(HONEST, "A careful critique of the answer, with a reason.", "Another critique, long enough to pass.")
    drop(lake, "honest.jsonl", honest, sign_file(DEVNET_CONTRIBUTOR_KEY, "critiques", honest))
    framed = rows(HONEST, "Written by the attacker in the victim's name, signed by the attacker.")
    drop(lake, "framed.jsonl", framed, sign_file(OUTSIDER_KEY, "critiques", framed))
    relabelled = honest.replace(HONEST.encode(), ATTACKER.encode())
    drop(lake, "relabelled.jsonl", relabelled, sign_file(DEVNET_CONTRIBUTOR_KEY, "critiques", honest))
    drop(lake, "unsigned.jsonl", rows(HONEST, "No signature beside this one at all, none.", "Nor beside this one."))
    other = rows(HONEST, "Signed for a different dataset than this one.")
    drop(lake, "other-dataset.jsonl", other, sign_file(DEVNET_CONTRIBUTOR_KEY, "instructions", other))
    linked = rows(HONEST, "A sidecar that is a link to the honest one.")
    drop(lake, "linked.jsonl", linked)
    os.symlink(tmp_path / "lake/incoming/critiques/honest.jsonl.sig.json",
               tmp_path / "lake/incoming/critiques/linked.jsonl.sig.json")

    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
    quarantine = pq.read_table(io.BytesIO(lake.read(layout.batch_file("critiques", 0, layout.QUARANTINE)))).to_pylist()
    reasons = sorted((r["source_key"].rsplit("/", 1)[1], r["reason"]) for r in quarantine)
    assert reasons == [("framed.jsonl", "contributor_not_signer"), ("linked.jsonl", "unsigned_source"),
                       ("other-dataset.jsonl", "unsigned_source"), ("relabelled.jsonl", "unsigned_source"),
                       ("relabelled.jsonl", "unsigned_source"), ("unsigned.jsonl", "unsigned_source"),
                       ("unsigned.jsonl", "unsigned_source")]
    details = {r["source_key"].rsplit("/", 1)[1]: r["detail"] for r in quarantine}
    assert "sha256: signs" in details["relabelled.jsonl"] and "dataset: signs 'instructions'" in details["other-dataset.jsonl"]
    assert details["unsigned.jsonl"] == "no signature beside it (unsigned.jsonl.sig.json)"
    assert manifest.data["counts"]["accepted"] == 2
    assert {r["contributor"]: int(r["amount"]) for r in
            pq.read_table(io.BytesIO(lake.read(layout.batch_file("critiques", 0, layout.REWARDS)))).to_pylist()
            if int(r["amount"])} == {HONEST: 10**15 * sum(len(t) for t in (
                "What is 2 + 2?", "4.", "A careful critique of the answer, with a reason.", "en",
                "What is 2 + 2?", "4.", "Another critique, long enough to pass.", "en"))}

    # Anyone re-checks the manifest's signatures with an independent library (eth-account).
    signed = [s for s in manifest.data["sources"] if "signer" in s]
    assert [s["key"].rsplit("/", 1)[1] for s in signed] == ["framed.jsonl", "honest.jsonl"]
    for source in signed:
        text = message("critiques", source["sha256"]).decode()
        assert Account.recover_message(encode_defunct(text=text), signature=source["signature"]).lower() == source["signer"]
    assert {s["key"].rsplit("/", 1)[1]: s["signer"] for s in signed} == {"framed.jsonl": ATTACKER, "honest.jsonl": HONEST}


def test_a_declared_dataset_ignores_sidecars_and_never_takes_one_for_a_source(tmp_path: Path) -> None:
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    lake = open_lake((tmp_path / "lake").as_uri())
    data = (REPO_ROOT / "samples/instructions/contributions-a.jsonl").read_bytes()
    lake.write("incoming/instructions/a.jsonl", data)
    lake.write("incoming/instructions/a.jsonl.sig.json", CONTRIBUTION.dump(sign_file(OUTSIDER_KEY, "instructions", data)))
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
    assert [s["key"] for s in manifest.data["sources"]] == ["incoming/instructions/a.jsonl"]
    assert "signer" not in manifest.data["sources"][0]


def test_a_plan_planted_in_the_lake_naming_a_signer_is_checked_again_at_commit(tmp_path: Path) -> None:
    """The attack: write raw/ and a staged plan whose source names the victim as its signer (with
    no valid signature). The commit recovers every signer itself: the rows are unsigned_source."""
    import hashlib

    from pipeline.lake.sources import Source, save_plan

    dataset = load_dataset(REPO_ROOT / "expectations", "critiques")
    lake = open_lake((tmp_path / "lake").as_uri())
    data = rows(HONEST, "Planted in the victim's name through a forged plan entry.")
    digest = hashlib.sha256(data).hexdigest()
    raw_key = layout.raw("critiques", 0, digest, "jsonl")
    lake.write(raw_key, data)
    forged = sign_file(OUTSIDER_KEY, "critiques", data)["signature"]  # a real signature, by someone else
    save_plan(lake, "critiques", 0, [Source("incoming/critiques/planted.jsonl", digest, len(data), raw_key,
                                            signer=HONEST, signature=forged)], [])
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
    assert manifest.data["counts"] == {"input": 1, "accepted": 0, "quarantined": 1, "duplicate": 0}
    quarantine = pq.read_table(io.BytesIO(lake.read(layout.batch_file("critiques", 0, layout.QUARANTINE)))).to_pylist()
    assert [r["reason"] for r in quarantine] == ["unsigned_source"]
