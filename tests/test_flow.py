"""The whole product end to end through the real CLI, on file:// and on SeaweedFS s3://,
anchored on a real anvil devnet."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.merkle import InclusionProof, root_from_inclusion

from conftest import OUTSIDER_KEY, REPO, cli, cli_json, contribute_one, trust_args

pytestmark = pytest.mark.e2e
SAMPLES = sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl"))
ALICE = "0x1111111111111111111111111111111111111111"


def committed_flow(env: dict[str, str], tmp_path: Path) -> dict:
    cli(env, "up")
    cli(env, "contribute", "--dataset", "instructions", *SAMPLES)
    report = cli_json(env, "run", "--dataset", "instructions")
    assert [c["seq"] for c in report["committed"]] == [0]
    return report["committed"][0]


@pytest.fixture(params=["file", "s3"])
def lake_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return request.getfixturevalue(f"{request.param}_env")


def test_a_batch_commits_anchors_and_its_receipts_verify(lake_env: dict[str, str], tmp_path: Path) -> None:
    batch = committed_flow(lake_env, tmp_path)
    counts = batch["counts"]
    assert counts == {"input": 30, "accepted": 25, "quarantined": 4, "duplicate": 1}
    status = cli_json(lake_env, "status", "--dataset", "instructions")["batches"]
    assert [(b["seq"], b["anchored"], b["root"]) for b in status] == [(0, True, batch["root"])]

    receipt = tmp_path / "alice.json"
    cli(lake_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", ALICE, "-o", str(receipt))
    trust = trust_args(lake_env, tmp_path)
    assert cli(lake_env, "verify", str(receipt), *trust).returncode == 0
    assert cli(lake_env, "verify", str(receipt), "--root", batch["root"], "--tree-size", "25").returncode == 0

    data = json.loads(receipt.read_text())
    assert data["root"] == batch["root"] and data["tree_size"] == 25
    assert all(row["record"]["contributor"] == ALICE for row in data["rows"])
    tampered = tmp_path / "tampered.json"
    prompt = data["rows"][0]["record"]["prompt"]
    data["rows"][0]["record"]["prompt"] = prompt[:-1] + ("x" if prompt[-1] != "x" else "y")
    tampered.write_text(json.dumps(data))
    proc = cli(lake_env, "verify", str(tampered), *trust, check=False)
    assert proc.returncode == 1
    assert f"rows [{data['range']['start']}, {data['range']['end']}) fold to root" in proc.stderr, proc.stderr

    # Leaves are ordered by contributor (SPEC §13.2): Alice's rows are one range, proved by one
    # proof of at most 2·log2(n) hashes.
    assert data["format"] == "anchorlake.receipt/2" and len(data["proof"]) <= 2 * 5
    assert data["range"]["end"] - data["range"]["start"] == len(data["rows"])
    span = [str(data["range"]["start"]), str(data["range"]["end"])]
    served = cli_json(lake_env, "proof", "--dataset", "instructions", "--batch", "0", "--range", *span)
    assert served["proof"] == data["proof"] and served["root"] == batch["root"] and served["tree_size"] == 25

    # A receipt claiming another tree size can still fold to the root (a proof alone does not
    # bind the size), so verify checks the size against the anchored one. Here: the first row of
    # the lowest address, leaf 0, whose proof is the same in a tree of 25 or 26 leaves (leaf 0's
    # siblings all lie to its right: its inclusion path, leaf level first, is its range proof).
    lowest = min(r["contributor"] for r in cli_json(lake_env, "rewards", "--dataset", "instructions")["rows"])
    first = tmp_path / "lowest.json"
    cli(lake_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", lowest, "-o", str(first))
    resized = json.loads(first.read_text())
    assert resized["range"]["start"] == 0
    leaf0 = cli_json(lake_env, "proof", "--dataset", "instructions", "--batch", "0", "--leaf", "0")
    resized |= {"tree_size": 26, "range": {"start": 0, "end": 1}, "proof": leaf0["path"], "rows": resized["rows"][:1]}
    (tmp_path / "resized.json").write_text(json.dumps(resized))
    proc = cli(lake_env, "verify", str(tmp_path / "resized.json"), *trust, check=False)
    assert proc.returncode == 1 and "tree size 26 differs from the anchored 25" in proc.stderr, proc.stderr
    # Offline, the size the user trusts binds it too; a root alone is refused as bad usage.
    proc = cli(lake_env, "verify", str(tmp_path / "resized.json"), "--root", batch["root"], "--tree-size", "25",
               check=False)
    assert proc.returncode == 1 and "tree size 26 is not the given tree size 25" in proc.stderr, proc.stderr
    proc = cli(lake_env, "verify", str(receipt), "--root", batch["root"], check=False)
    assert proc.returncode == 2 and "--root needs --tree-size" in proc.stderr

    # Any leaf's inclusion proof is served from the stored tree and folds to the root.
    served = cli_json(lake_env, "proof", "--dataset", "instructions", "--batch", "0", "--leaf", "24")
    proof = InclusionProof(24, 25, tuple(bytes.fromhex(p) for p in served["path"]))
    assert root_from_inclusion(proof, bytes.fromhex(served["leaf"])).hex() == batch["root"] == served["root"]

    # AI teams: pull checks every file and the root against the chain.
    pull = ["pull", "--dataset", "instructions", "--dest", str(tmp_path / "pulled")]
    proc = cli(lake_env, *pull, check=False)  # the lake's own deployment record is never the trust anchor
    assert proc.returncode == 2 and "nothing to verify the pull against" in proc.stderr, proc.stderr
    pulled = cli_json(lake_env, *pull, *trust[:2])
    assert pulled["pulled"][0]["verified"] is True
    table = pq.read_table(tmp_path / "pulled" / "000000" / "part-00000.parquet")
    assert table.num_rows == 25 and {"contributor", "salt", "prompt", "created_at"} <= set(table.column_names)

    rewards = cli_json(lake_env, "rewards", "--dataset", "instructions", "--verify", *trust[:2])
    assert rewards["verified"] is True
    paid = sum(int(r["amount"]) for r in rewards["rows"])
    assert paid == int(rewards["rewards"]["pool"]) == int(rewards["rewards"]["total"])


def test_rewards_and_pull_verify_what_the_chain_holds_not_what_the_lake_lists(file_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    """The attacks: rewards.parquet doctored (and its pin in the manifest updated) printed under
    "verified"; a batch deleted from the lake silently left out of a whole-dataset pull."""
    import hashlib

    committed_flow(file_env, tmp_path)
    contribute_one(file_env, tmp_path, "What is a rewards table?", ALICE)
    cli(file_env, "run", "--dataset", "instructions")
    trust = trust_args(file_env, tmp_path)[:2]
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    batch = lake / "batches/instructions/000000"
    table = pq.read_table(batch / "rewards.parquet")
    doctored = table.set_column(table.column_names.index("amount"), "amount",
                                pa.array([str(10 * int(a)) for a in table.column("amount").to_pylist()]))
    pq.write_table(doctored, batch / "rewards.parquet")
    manifest = json.loads((batch / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["path"] == "rewards.parquet":
            data = (batch / "rewards.parquet").read_bytes()
            entry |= {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (batch / "manifest.json").write_text(json.dumps(manifest))
    proc = cli(file_env, "rewards", "--dataset", "instructions", "--batch", "0", "--verify", *trust, check=False)
    assert proc.returncode == 1 and "differs from the anchored manifest hash" in proc.stderr, proc.stderr
    assert "amount" not in proc.stdout  # nothing of the doctored table is shown
    (batch / "manifest.json").unlink()
    proc = cli(file_env, "pull", "--dataset", "instructions", "--dest", str(tmp_path / "out"), *trust, check=False)
    assert proc.returncode == 1 and "the lake has no manifest for instructions batch 0, which the chain anchors" \
        in proc.stderr, proc.stderr


def test_a_second_batch_links_to_the_first_and_rewards_accumulate(file_env: dict[str, str], tmp_path: Path) -> None:
    committed_flow(file_env, tmp_path)
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"prompt": "What is a ledger?", "response": "A record of balances.", "language": "en",
                                 "consent": True, "created_at": "2026-11-20T08:00:00Z", "contributor": ALICE}) + "\n")
    cli(file_env, "contribute", "--dataset", "instructions", str(extra), *SAMPLES)
    report = cli_json(file_env, "run", "--dataset", "instructions")
    assert [(c["seq"], c["counts"]["accepted"]) for c in report["committed"]] == [(1, 1)]
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    first = (lake / "batches/instructions/000000/manifest.json").read_bytes()
    second = json.loads((lake / "batches/instructions/000001/manifest.json").read_bytes())
    import hashlib

    assert second["previous"] == {"seq": 0, "manifest_sha256": hashlib.sha256(first).hexdigest()}
    receipt = tmp_path / "alice1.json"
    cli(file_env, "receipt", "--dataset", "instructions", "--batch", "1", "--contributor", ALICE, "-o", str(receipt))
    data = json.loads(receipt.read_text())
    reward = data["reward"]
    assert int(reward["amount"]) == 10**21  # Alice is the only contributor of batch 1: the whole pool
    assert reward["previous"]["seq"] == 0
    assert int(reward["cumulative_amount"]) == int(reward["previous"]["cumulative_amount"]) + 10**21
    trust = trust_args(file_env, tmp_path)
    proc = cli(file_env, "verify", str(receipt), *trust)
    assert "batch amount as the cumulative amount less the one under rootAt(0)" in proc.stdout, proc.stdout
    # The batch amount is bound by the two published roots: neither inflating it nor a false
    # earlier cumulative amount verifies.
    for name, forged in (("more", reward | {"amount": str(10**22)}),
                         ("earlier", reward | {"previous": reward["previous"] | {"cumulative_amount": "0"}})):
        (tmp_path / f"{name}.json").write_text(json.dumps(data | {"reward": forged}))
        proc = cli(file_env, "verify", str(tmp_path / f"{name}.json"), *trust, check=False)
        assert proc.returncode == 1 and "reward:" in proc.stderr and "OK" not in proc.stdout, (name, proc.stderr)
    # Hiding the earlier reward (to pass the whole cumulative amount off as this batch's) cannot be
    # refuted, since a rewards tree cannot prove an address absent: it is then said not to be checked.
    hidden = data | {"reward": reward | {"previous": None, "amount": reward["cumulative_amount"]}}
    (tmp_path / "hidden.json").write_text(json.dumps(hidden))
    proc = cli(file_env, "verify", str(tmp_path / "hidden.json"), *trust)
    assert "batch amount not checked: the receipt shows no earlier cumulative amount" in proc.stdout, proc.stdout


def test_malformed_receipts_and_bad_arguments_exit_2_with_one_line(file_env: dict[str, str], tmp_path: Path) -> None:
    committed_flow(file_env, tmp_path)
    good = tmp_path / "alice.json"
    cli(file_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", ALICE, "-o", str(good))
    data = json.loads(good.read_text())
    cases = {
        "not-json.json": "{not json",
        "wrong-tag.json": json.dumps(data | {"format": "anchorlake.receipt/0"}),
        "short-root.json": json.dumps(data | {"root": data["root"][:-2]}),
        "range-past-size.json": json.dumps(data | {"range": {"start": 0, "end": data["tree_size"] + 1}}),
        "rows-not-range.json": json.dumps(data | {"rows": data["rows"] + data["rows"][:1]}),
        "proof-length.json": json.dumps(data | {"proof": data["proof"][:-1]}),
        "cut-short.jsonl.gz": gzip.compress(good.read_bytes())[:-4],
        "not-gzip.json.gz": good.read_text(),
        "two-in-one.json.gz": gzip.compress(good.read_bytes() * 2),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        proc = cli(file_env, "verify", str(path), check=False)
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for args in (["verify"], ["frobnicate"], ["receipt", "--dataset", "instructions", "--batch", "x", "--contributor", ALICE],
                 ["run", "--dataset", "no-such-dataset"]):
        proc = cli(file_env, *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # A missing file among several drops none of them.
    sample = REPO / "samples" / "preferences" / "contributions.jsonl"
    proc = cli(file_env, "contribute", "--dataset", "preferences", str(sample), str(tmp_path / "missing.jsonl"),
               check=False)
    assert proc.returncode == 2 and "missing.jsonl: no such file" in proc.stderr
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    assert not (lake / "incoming" / "preferences").exists()


def test_an_unverified_pull_of_an_empty_dataset_needs_no_chain_and_a_verified_one_does(file_env: dict[str, str],
                                                                                         tmp_path: Path) -> None:
    env = file_env | {"ANCHORLAKE_RPC_URL": "http://127.0.0.1:9"}
    pull = ["pull", "--dataset", "preferences", "--dest", str(tmp_path / "dest")]
    assert cli_json(env, *pull, "--no-verify") == {"dataset": "preferences", "pulled": [], "kept": [],
                                                       "failed": [], "removed": []}
    proc = cli(env, *pull, "--contract", "0x" + "11" * 20, check=False)
    assert proc.returncode == 3 and "cannot be reached" in proc.stderr, proc.stderr


def test_an_unreachable_chain_exits_3(file_env: dict[str, str], tmp_path: Path) -> None:
    committed_flow(file_env, tmp_path)
    receipt = tmp_path / "alice.json"
    cli(file_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", ALICE, "-o", str(receipt))
    proc = cli(file_env, "verify", str(receipt), "--rpc", "http://127.0.0.1:9", check=False)
    assert proc.returncode == 3 and "cannot be reached" in proc.stderr and "Traceback" not in proc.stderr
    # A provider URL carries its API key in the path or the credentials: neither is ever shown.
    keyed = "http://someone:PASSWORD@127.0.0.1:9/v3/APIKEY123"
    proc = cli(file_env, "verify", str(receipt), "--rpc", keyed, check=False)
    assert proc.returncode == 3 and "http://***@127.0.0.1:9/…" in proc.stderr, proc.stderr
    assert "PASSWORD" not in proc.stderr + proc.stdout and "APIKEY123" not in proc.stderr + proc.stdout
    up = cli(file_env | {"ANCHORLAKE_RPC_URL": file_env["ANCHORLAKE_RPC_URL"] + "/?apikey=APIKEY123"}, "up")
    assert "APIKEY123" not in up.stdout + up.stderr and "/…" in up.stdout


def test_the_read_only_identity_reads_what_readers_may_see_and_nothing_else(published_env: dict[str, str], seaweed,
                                                                           tmp_path: Path) -> None:
    """SPEC §13.1: the reader identity reads and lists batches/, receipts/ and deployments/, writes
    nothing, and is denied incoming/, raw/, private/ (the raw text of rejected records, no_consent
    ones included) and state/. With it an AI team pulls and verifies, and a contributor verifies."""
    import boto3
    from botocore.exceptions import ClientError

    committed_flow(published_env, tmp_path)
    trust = trust_args(published_env, tmp_path)
    bucket, _, prefix = published_env["ANCHORLAKE_LAKE"].removeprefix("s3://").partition("/")
    admin = boto3.client("s3", endpoint_url=seaweed.endpoint, aws_access_key_id=seaweed.admin.access_key,
                         aws_secret_access_key=seaweed.admin.secret_key, region_name="us-east-1")
    reader = boto3.client("s3", endpoint_url=seaweed.endpoint, aws_access_key_id=seaweed.reader.access_key,
                          aws_secret_access_key=seaweed.reader.secret_key, region_name="us-east-1")
    keys = [o["Key"] for o in admin.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]]
    by_top = {}
    for key in keys:
        by_top.setdefault(key.split("/")[1], key)
    assert set(by_top) == {"batches", "receipts", "deployments", "iceberg", "incoming", "raw", "private", "state"}
    for top, key in by_top.items():
        allowed = top in ("batches", "receipts", "deployments", "iceberg")  # iceberg/: the tables' metadata
        for call, kwargs in ((reader.get_object, {"Key": key}), (reader.list_objects_v2, {"Prefix": f"{prefix}/{top}/"})):
            if allowed:
                call(Bucket=bucket, **kwargs)
            else:
                with pytest.raises(ClientError, match="AccessDenied"):
                    call(Bucket=bucket, **kwargs)
    with pytest.raises(ClientError, match="AccessDenied"):
        reader.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    with pytest.raises(ClientError, match="AccessDenied"):
        reader.put_object(Bucket=bucket, Key=f"{prefix}/batches/instructions/000000/data/part-00001.parquet", Body=b"x")
    rejected = [k for k in keys if k.startswith(f"{prefix}/private/instructions/000000/rejected")]
    assert rejected, keys
    quarantine = pq.read_table(pa.BufferReader(reader.get_object(
        Bucket=bucket, Key=f"{prefix}/batches/instructions/000000/quarantine.parquet")["Body"].read()))
    assert "raw" not in quarantine.column_names and quarantine.num_rows == 5
    private = pq.read_table(pa.BufferReader(admin.get_object(Bucket=bucket, Key=rejected[0])["Body"].read()))
    assert sorted(private.column("raw_sha256").to_pylist()) == sorted(quarantine.column("raw_sha256").to_pylist())
    assert all(hashlib.sha256(r["raw"]).hexdigest() == r["raw_sha256"] for r in private.to_pylist())

    as_reader = published_env | seaweed.env(seaweed.reader)
    pulled = cli_json(as_reader, "pull", *trust, "--dest", str(tmp_path / "dest"))
    assert [p["seq"] for p in pulled["pulled"]] == [0]
    receipt = tmp_path / "alice.json"
    cli(as_reader, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", ALICE, "-o", str(receipt))
    assert cli(as_reader, "verify", str(receipt), *trust).returncode == 0


def test_contributors_claim_their_cumulative_rewards_once_whatever_batch_they_were_in(file_env: dict[str, str],
                                                                                     tmp_path: Path) -> None:
    """Three batches: A in batches 0 and 2, B only in batch 0, C in batch 1. After batch 2, A and B
    each `claim` (an outsider's key pays the gas) and receive exactly their cumulative amounts
    under the latest root; a second claim pays nothing and says so; a forged amount reverts by name."""
    from anchoring.chain import Chain
    from anchoring.distributor import claim
    from pipeline.datasets import dataset_id
    from pipeline.errors import ChainError

    a, b, c = ALICE, "0x2222222222222222222222222222222222222222", "0x3333333333333333333333333333333333333333"
    pool = 10**21
    cli(file_env, "up")
    for batch in ((a, b), (c,), (a,)):
        for who in batch:
            contribute_one(file_env, tmp_path, f"What does {who} contribute to batch {len(batch)} {batch}?", who)
        cli(file_env, "run", "--dataset", "instructions")
    trust = trust_args(file_env, tmp_path)[:2]
    payer = file_env | {"ANCHORLAKE_CONTRIBUTOR_KEY": OUTSIDER_KEY}
    claims = {who: cli_json(payer, "claim", "--dataset", "instructions", "--contributor", who, *trust) for who in (a, b)}
    assert {who: (r["seq"], r["claimed_now"], r["balance"]) for who, r in claims.items()} == {
        a: (2, str(pool + pool // 2), str(pool + pool // 2)), b: (2, str(pool // 2), str(pool // 2))}
    again = cli(payer, "claim", "--dataset", "instructions", "--contributor", a, *trust)
    assert again.stdout.startswith(f"nothing to claim: {a} has been paid its cumulative {pool + pool // 2}"), again.stdout
    statement = cli_json(file_env, "rewards", "--dataset", "instructions", "--contributor", a, *trust)
    assert [(x["seq"], x["amount"]) for x in statement["batches"]] == [(0, str(pool // 2)), (2, str(pool))]
    assert (statement["claimed"], statement["claimable"]) == (str(pool + pool // 2), "0")
    unpaid = cli_json(file_env, "rewards", "--dataset", "instructions", "--contributor", c, *trust)
    assert (unpaid["claimed"], unpaid["claimable"]) == ("0", str(pool))

    deployment = json.loads(Path(trust[1]).read_text())
    chain = Chain(file_env["ANCHORLAKE_RPC_URL"], OUTSIDER_KEY)
    with pytest.raises(ChainError, match="InvalidProof"):  # C's true proof, a forged larger amount
        receipt = tmp_path / "c.json"
        cli(file_env, "receipt", "--dataset", "instructions", "--batch", "1", "--contributor", c, "-o", str(receipt))
        proof = [bytes.fromhex(p[2:]) for p in json.loads(receipt.read_text())["reward"]["proof"]]
        claim(chain, deployment["RewardDistributor"], dataset_id("instructions"), c, 2 * pool, proof)


def test_a_contributor_whose_records_were_all_rejected_is_told_why(file_env: dict[str, str], tmp_path: Path) -> None:
    """`receipt` for a contributor with only rejections says so and points to `explain`, which lists
    each rejection with its source, line, reason and detail (never the record's text)."""
    dave = "0x4444444444444444444444444444444444444444"
    cli(file_env, "up")
    contribute_one(file_env, tmp_path, "What is accepted?", ALICE)
    mine = tmp_path / "dave.jsonl"
    good = {"prompt": "A private thought.", "response": "Kept.", "language": "en", "consent": True,
            "created_at": "2026-11-20T08:00:00Z", "contributor": dave}
    mine.write_text(json.dumps(good | {"consent": False}) + "\n" + json.dumps(good | {"created_at": "yesterday"}) + "\n")
    cli(file_env, "contribute", "--dataset", "instructions", str(mine))
    cli(file_env, "run", "--dataset", "instructions")
    proc = cli(file_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", dave, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"anchorlake: {dave} has no accepted row in instructions batch 0: 2 rejected, 0 duplicate; see anchorlake "
        f"explain --dataset instructions --batch 0 --contributor {dave}"), proc.stderr
    explained = cli_json(file_env, "explain", "--dataset", "instructions", "--contributor", dave)["rejections"]
    assert [(r["seq"], r["source_key"].endswith("dave.jsonl"), r["line"], r["reason"]) for r in explained] == [
        (0, True, 1, "no_consent"), (0, True, 2, "wrong_type")]
    text = cli(file_env, "explain", "--dataset", "instructions", "--batch", "0").stdout
    assert "no_consent" in text and "A private thought" not in text and text.endswith("2 rejected or duplicate record(s) in 1 batch(es)\n")


def test_a_manifest_planted_past_the_last_batch_halts_nothing(file_env: dict[str, str], tmp_path: Path) -> None:
    """One object written into the lake (a manifest for batch 999999, junk or not) used to stop
    every later stage. A manifest past a gap is no commit's: it is ignored, and batches go on."""
    committed_flow(file_env, tmp_path)
    planted = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):]) / "batches/instructions/999999/manifest.json"
    planted.parent.mkdir(parents=True)
    planted.write_text("{}")
    contribute_one(file_env, tmp_path, "Does a planted manifest stop the next batch?", ALICE)
    assert [c["seq"] for c in cli_json(file_env, "run", "--dataset", "instructions")["committed"]] == [1]
    assert [b["seq"] for b in cli_json(file_env, "status", "--dataset", "instructions")["batches"]] == [0, 1]


def test_a_points_dataset_publishes_its_ledger_root_and_receipts_verify(file_env: dict[str, str], tmp_path: Path) -> None:
    cli(file_env, "up")
    cli(file_env, "contribute", "--dataset", "preferences",
        *sorted(str(p) for p in (REPO / "samples" / "preferences").glob("*.jsonl")))
    report = cli_json(file_env, "run", "--dataset", "preferences")
    assert report["committed"][0]["counts"]["accepted"] == 10
    rewards = cli_json(file_env, "rewards", "--dataset", "preferences", "--verify", *trust_args(file_env, tmp_path)[:2])
    assert rewards["verified"] is True and rewards["rewards"]["payout"] == "points"
    assert sum(int(r["amount"]) for r in rewards["rows"]) == 1000
    receipt = tmp_path / "p.json"
    cli(file_env, "receipt", "--dataset", "preferences", "--batch", "0", "--contributor", ALICE, "-o", str(receipt))
    assert json.loads(receipt.read_text())["reward"]["unit"] == "points"
    assert cli(file_env, "verify", str(receipt), *trust_args(file_env, tmp_path, "preferences")).returncode == 0


def test_verification_is_anchored_by_the_user_never_by_the_receipt(file_env: dict[str, str], tmp_path: Path) -> None:
    """The attacks: a forged row with a receipt pointing at a self-deployed BatchAnchor, a receipt
    relabelled to another dataset, an inflated reward, and a verification with nothing to check against."""
    from eth_hash.auto import keccak

    from anchoring.batch_anchor import anchor_batch
    from anchoring.chain import Chain
    from pipeline.core.jcs import canonical_bytes
    from pipeline.core.merkle import leaf_hash

    committed_flow(file_env, tmp_path)
    trust = trust_args(file_env, tmp_path)
    receipt = tmp_path / "alice.json"
    cli(file_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", ALICE, "-o", str(receipt))
    genuine = json.loads(receipt.read_text())

    def verdict(name: str, data: dict, *args: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / name).write_text(json.dumps(data))
        return cli(file_env, "verify", str(tmp_path / name), *args, check=False)

    # A forged one-row receipt whose root the attacker anchored in a BatchAnchor of their own.
    row = {"record": genuine["rows"][0]["record"] | {"prompt": "a row that was never contributed"}}
    forged_root = leaf_hash(canonical_bytes(row["record"]))
    attacker = Chain(file_env["ANCHORLAKE_RPC_URL"], OUTSIDER_KEY)
    own = attacker.deploy("BatchAnchor", attacker.address, attacker.address)
    forged_manifest = bytes.fromhex(genuine["manifest_sha256"])
    anchor_batch(attacker, own, keccak(b"instructions"), 0, forged_root, 1, forged_manifest)
    forged = genuine | {"root": forged_root.hex(), "tree_size": 1, "range": {"start": 0, "end": 1}, "proof": [],
                        "rows": [row], "reward": None,
                        "anchor": genuine["anchor"] | {"contract": own}}
    proc = verdict("forged.json", forged, *trust)
    assert proc.returncode == 1 and f"the receipt names contract {own}, you trust" in proc.stderr, proc.stderr
    assert "root" in proc.stderr and "OK" not in proc.stdout
    assert verdict("forged.json", forged, "--contract", own, "--dataset", "instructions").returncode == 0  # only if
    # the user chose to trust the attacker's contract: the trust anchor is theirs to give.

    repeated = genuine | {"rows": genuine["rows"][:1] * 5}  # one row counted five times
    proc = verdict("repeated.json", repeated, *trust)
    assert proc.returncode == 1 and "rows [" in proc.stderr and "fold to root" in proc.stderr, proc.stderr

    relabelled = genuine | {"dataset": "preferences"}
    proc = verdict("relabelled.json", relabelled, *trust)
    assert proc.returncode == 1 and "the receipt says dataset 'preferences', you are verifying 'instructions'" in proc.stderr
    proc = verdict("relabelled.json", relabelled, *trust[:2], "--dataset", "preferences")
    assert proc.returncode == 1 and "dataset id" in proc.stderr, proc.stderr

    inflated = genuine | {"reward": genuine["reward"] | {"cumulative_amount": str(10 * int(genuine["reward"]["cumulative_amount"]))}}
    proc = verdict("inflated.json", inflated, *trust)
    assert proc.returncode == 1 and "reward: cumulative amount" in proc.stderr and "does not fold" in proc.stderr
    paid_more = genuine | {"reward": genuine["reward"] | {"amount": str(10 * int(genuine["reward"]["amount"]))}}
    proc = verdict("paid-more.json", paid_more, *trust)
    assert proc.returncode == 1 and "reward: batch amount" in proc.stderr, proc.stderr
    proc = verdict("inflated.json", inflated, "--contract", json.loads(Path(trust[1]).read_text())["BatchAnchor"],
                   "--dataset", "instructions")
    assert proc.returncode == 1 and "the reward was not checked" in proc.stderr  # never "verified" unchecked

    proc = verdict("genuine.json", genuine)
    assert proc.returncode == 2 and "nothing to verify against" in proc.stderr and "OK" not in proc.stdout


def test_status_tells_an_altered_lake_from_a_lost_anchor_and_lists_every_batch(file_env: dict[str, str],
                                                                               tmp_path: Path) -> None:
    committed_flow(file_env, tmp_path)
    contribute_one(file_env, tmp_path, "What is an audit?", ALICE)
    cli(file_env, "run", "--dataset", "instructions")
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    edited = lake / "batches/instructions/000000/manifest.json"
    edited.write_text(json.dumps(json.loads(edited.read_text()) | {"created_at": "2020-01-01T00:00:00.000000Z"}))
    broken = lake / "batches/instructions/000001/manifest.json"
    data = json.loads(broken.read_text())
    data["counts"]["accepted"] += 1
    broken.write_text(json.dumps(data))
    proc = cli(file_env, "--json", "status", "--dataset", "instructions", check=False)
    assert proc.returncode == 1, proc.stderr
    states = [b["anchor_state"] for b in json.loads(proc.stdout)["batches"]]
    assert len(states) == 2 and all(s.startswith("LAKE ALTERED") for s in states), states
    assert "the manifest of batch 0 differs from the anchored manifest hash" in states[0]
    assert "counts: input != accepted + quarantined + duplicate" in states[1]


def test_audit_passes_an_untouched_dataset_and_names_the_first_thing_altered(file_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    committed_flow(file_env, tmp_path)
    contribute_one(file_env, tmp_path, "What is an audit trail?", ALICE)
    cli(file_env, "run", "--dataset", "instructions")
    trust = trust_args(file_env, tmp_path)
    audit = ["audit", *trust]
    report = cli_json(file_env, *audit)
    assert report == {"dataset": "instructions", "sound": [0, 1], "first_difference": None, "rewards_checked": True}
    batches = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):]) / "batches/instructions"

    def altered(path: Path, data: bytes) -> str:
        original = path.read_bytes()
        path.write_bytes(data)
        try:
            proc = cli(file_env, *audit, check=False)
        finally:
            path.write_bytes(original)
        assert proc.returncode == 1, proc.stderr
        return proc.stderr

    part = batches / "000001/data/part-00000.parquet"
    flipped = bytearray(part.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    assert "000001/data/part-00000.parquet: SHA-256 differs from the manifest's" in altered(part, bytes(flipped))

    manifest = batches / "000000/manifest.json"
    edited = json.dumps(json.loads(manifest.read_text()) | {"created_at": "2020-01-01T00:00:00.000000Z"}).encode()
    assert "batch 0: the manifest differs from the anchored manifest hash" in altered(manifest, edited)

    first = batches / "000000/data/part-00000.parquet"
    rows = pq.read_table(first)
    shorter = tmp_path / "shorter.parquet"
    pq.write_table(rows.slice(0, rows.num_rows - 1), shorter)
    assert "000000/data/part-00000.parquet: SHA-256 differs" in altered(first, shorter.read_bytes())

    tree = batches / "000001/rewards-tree.json"
    swapped = (batches / "000000/rewards-tree.json").read_bytes()
    assert "000001/rewards-tree.json: SHA-256 differs" in altered(tree, swapped)
    assert cli(file_env, *audit).returncode == 0  # everything restored


@pytest.mark.parametrize("answer", ["a JSON-RPC error quoting the path", "an HTML page quoting the path"])
def test_an_rpc_that_quotes_its_secret_path_back_never_gets_it_printed(file_env: dict[str, str], tmp_path: Path,
                                                                      answer: str) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Node(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            if answer.startswith("a JSON-RPC"):
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {
                    "code": -32000, "message": f"invalid api key in {self.path}"}}).encode()
            else:
                body = f"<html>bad gateway for {self.path}</html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Node)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v3/SECRETKEY123"
        receipt = tmp_path / "r.json"
        receipt.write_text(json.dumps({"format": "anchorlake.receipt/1", "dataset": "instructions", "seq": 0,
                                       "contributor": ALICE, "root": "00" * 32, "tree_size": 1,
                                       "manifest_sha256": "00" * 32, "anchor": None, "reward": None,
                                       "rows": [{"leaf_index": 0, "record": {"prompt": "x"}, "path": []}]}))
        proc = cli(file_env, "verify", str(receipt), "--rpc", url, "--contract", "0x" + "11" * 20,
                   "--dataset", "instructions", check=False)
        assert proc.returncode == 3 and "SECRETKEY123" not in proc.stderr + proc.stdout, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "internal error" not in proc.stderr, proc.stderr
    finally:
        server.shutdown()


def test_known_bad_inputs_get_one_line_and_their_exit_code_never_an_internal_error(file_env: dict[str, str],
                                                                                  tmp_path: Path) -> None:
    """What a hostile-input sweep of the CLI found: each is one line on stderr, exit 2 for bad input
    (1 for a damaged lake found by a check), never "internal error" nor a traceback."""
    committed_flow(file_env, tmp_path)
    trust = trust_args(file_env, tmp_path)
    deployment = json.loads(Path(trust[1]).read_text())
    receipt = tmp_path / "alice.json"
    cli(file_env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor", ALICE, "-o", str(receipt))
    huge = tmp_path / "huge-seq.json"
    huge.write_text(json.dumps(json.loads(receipt.read_text()) | {"seq": 10**40}))
    empty = tmp_path / "no-rows.json"
    empty.write_text(json.dumps(json.loads(receipt.read_text()) | {"rows": []}))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    verify = ["verify", str(receipt), "--dataset", "instructions"]
    cases = [
        (verify + ["--contract", "0x123"], {}, 2, "the BatchAnchor address must be 0x and 40 hex digits"),
        (verify + ["--contract", "0x" + "00" * 20], {}, 2, "no contract of the expected kind is at that address"),
        (verify + ["--contract", deployment["RewardDistributor"]], {}, 2, "holds another kind of contract"),
        (verify + ["--deployment", trust[1], "--rpc", "http://[::1"], {}, 2, "the chain RPC URL is malformed"),
        (["verify", str(huge), *trust], {}, 2, "seq/tree_size: must be >= 0 and below 2^64"),
        (["verify", str(empty), *trust], {}, 2, "rows: is empty: a receipt proves at least one row"),
        (["verify", str(deep), "--root", "00" * 32, "--tree-size", "1"], {}, 2, "JSON nested too deeply"),
        (["status"], {"ANCHORLAKE_BATCH_ANCHOR": "zz"}, 2, "ANCHORLAKE_BATCH_ANCHOR must be 0x and 40 hex digits"),
        (["status"], {"ANCHORLAKE_LAKE": "file://"}, 2, "must be file:///absolute/path"),
        (["status"], {"ANCHORLAKE_LAKE": "file://relative/x"}, 2, "must be file:///absolute/path"),
        (["status"], {"ANCHORLAKE_LEASE_SECONDS": "nan"}, 2, "ANCHORLAKE_LEASE_SECONDS must be a number of seconds > 0"),
        (["status"], {"ANCHORLAKE_CHAIN_TIMEOUT": "-1"}, 2, "ANCHORLAKE_CHAIN_TIMEOUT must be a number of seconds > 0"),
        (["status"], {"ANCHORLAKE_LAKE": "s3://b/p", "AWS_ENDPOINT_URL": "not a url"}, 2, "S3 settings: Invalid endpoint"),
        (["contribute", "--dataset", "instructions", str(receipt)], {"ANCHORLAKE_LAKE": a_file.as_uri()}, 2,
         "Not a directory"),
        (["pull", "--dataset", "instructions", "--dest", str(a_file), *trust[:2]], {}, 2, "Not a directory"),
        (["pull", "--dataset", "instructions", "--batch", "7", "--dest", str(tmp_path / "d"), *trust[:2]], {}, 2,
         "instructions has no batch 7"),
        (["status", "--dataset", ""], {}, 2, "must name a dataset, got an empty name"),
    ]
    for args, env, code, expected in cases:
        proc = cli(file_env | env, *args, check=False)
        errors = [line for line in proc.stderr.splitlines() if not line.startswith("... ")]  # not progress
        assert (proc.returncode, len(errors)) == (code, 1) and expected in errors[0], (args, env, proc.returncode, proc.stderr)
    part = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):]) / "batches/instructions/000000/data/part-00000.parquet"
    part.unlink()
    proc = cli(file_env, "pull", "--dataset", "instructions", "--dest", str(tmp_path / "e"), *trust[:2], check=False)
    assert proc.returncode == 1 and "instructions batch 0 cannot be pulled" in proc.stderr, proc.stderr
    run = cli(file_env, "run", "--dataset", "instructions")
    assert "INFO" not in run.stderr, run.stderr  # Great Expectations' chatter is not ours to show


def test_global_flags_go_before_or_after_the_command_and_unknown_names_are_named(file_env: dict[str, str]) -> None:
    assert json.loads(cli(file_env, "status", "--json", "--quiet").stdout) == \
        json.loads(cli(file_env, "--json", "--quiet", "status").stdout)
    for args, expected in ((("receipt", "--dataset", "instrctions", "--batch", "0", "--contributor", ALICE),
                            "unknown dataset 'instrctions'"),
                           (("receipt", "--dataset", "instructions", "--batch", "5", "--contributor", ALICE),
                            "instructions has no batch 5"),
                           (("proof", "--dataset", "instructions", "--batch", "0", "--leaf", "0"),
                            "instructions has no batch 0")):
        proc = cli(file_env, *args, check=False)
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    for args, expected in ((("status",), "declarations folder /nonexistent does not exist"),
                           (("check",), "declarations folder /nonexistent does not exist")):
        proc = cli(file_env | {"ANCHORLAKE_DATASETS": "/nonexistent"}, *args, check=False)
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(file_env: dict[str, str]) -> None:
    """`anchorlake proof … | head`: a write to a closed pipe ends the command with exit 0 and no
    BrokenPipe message (the whole CLI, in a shell pipeline, with more output than a pipe buffers)."""
    script = ("import sys; sys.argv = ['anchorlake', 'status']; from pipeline import cli; "
              "cli.COMMANDS['status'] = lambda args, out: [print('x' * 1000) for _ in range(1000)] and 0; "
              "raise SystemExit(cli.main())")
    proc = subprocess.run(f"{sys.executable} -c \"{script}\" | head -c 10 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, env=file_env, cwd=REPO)
    assert proc.stdout.strip() == "0" and proc.stderr == "", (proc.stdout, proc.stderr)


def test_a_receipts_index_overwritten_with_garbage_never_halts_the_dataset(file_env: dict[str, str], tmp_path: Path) -> None:
    """A lake writer who puts garbage in a batch's receipts index: the next run writes the receipts
    again and goes on, and they verify."""
    committed_flow(file_env, tmp_path)
    published = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):]) / "receipts" / "instructions" / "000000"
    (published / "index.json").write_text("garbage")
    assert cli(file_env, "run", "--dataset", "instructions").returncode == 0
    index = json.loads((published / "index.json").read_text())
    [name] = index["files"]
    receipts = published / f"{name}.jsonl.gz"
    assert cli_json(file_env, "verify", str(receipts), *trust_args(file_env, tmp_path))["ok"]
