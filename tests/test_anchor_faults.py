"""The anchor stage against a real chain that misbehaves: each test ends with exactly one
BatchAnchored event for the batch and an anchor.json that matches the manifest and the chain."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from pipeline.config import DEVNET_KEYS
from pipeline.devnet import Anvil

from conftest import ANCHORLAKE, OUTSIDER_KEY, REPO, base_env, cli, cli_json, contribute_one, trust_args

pytestmark = pytest.mark.integration
SAMPLES = sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl"))
DATASET_ID = Web3.keccak(text="instructions")


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Anvil]:
    """A fresh anvil per test: these tests stop mining, drop, revert and restart."""
    node = Anvil(workdir=tmp_path / "anvil", state=tmp_path / "anvil" / "state.json").start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def env(tmp_path: Path, chain: Anvil) -> dict[str, str]:
    env = base_env(tmp_path) | {"ANCHORLAKE_LAKE": (tmp_path / "lake").as_uri(), "ANCHORLAKE_RPC_URL": chain.url,
                                "ANCHORLAKE_CHAIN_TIMEOUT": "120"}
    cli(env, "up")
    cli(env, "contribute", "--dataset", "instructions", *SAMPLES)
    return env


def rpc(node: Anvil, method: str, *params: object) -> object:
    w3 = Web3(Web3.HTTPProvider(node.url))
    response = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in response, response
    return response["result"]


def anchored_events(env: dict[str, str]) -> list:
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    address = json.loads((lake / "deployments/31337.json").read_text())["BatchAnchor"]
    w3 = Web3(Web3.HTTPProvider(env["ANCHORLAKE_RPC_URL"]))
    topic = Web3.keccak(text="BatchAnchored(bytes32,uint64,bytes32,uint64,bytes32)")
    return w3.eth.get_logs({"address": Web3.to_checksum_address(address), "fromBlock": 0,
                            "topics": [topic, DATASET_ID]})


def assert_exactly_one_anchor(env: dict[str, str]) -> dict:
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    events = anchored_events(env)
    assert len(events) == 1, events
    record = json.loads((lake / "batches/instructions/000000/anchor.json").read_text())
    manifest = lake / "batches/instructions/000000/manifest.json"
    import hashlib

    assert record["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert record["root"] == json.loads(manifest.read_text())["merkle"]["root"]
    assert record["tx_hash"] == "0x" + bytes(events[0]["transactionHash"]).hex()
    assert record["block_hash"] == "0x" + bytes(events[0]["blockHash"]).hex()
    status = cli_json(env, "status", "--dataset", "instructions")["batches"][0]
    assert status["anchored"], status
    return record


def intent(env: dict[str, str]) -> dict:
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    return json.loads((lake / "state/instructions/000000/anchor-intent.json").read_text())


@pytest.mark.parametrize("point", ["chain.after_sign", "chain.after_broadcast", "chain.before_record"])
def test_a_run_killed_at_each_point_resumes_the_same_transaction(env: dict[str, str], point: str) -> None:
    killed = cli(env | {"ANCHORLAKE_FAULT": point}, "run", "--dataset", "instructions", check=False)
    assert killed.returncode == -9, killed.stderr  # SIGKILL, at exactly that point
    first = intent(env)["attempts"][0]["tx_hash"]
    cli(env, "run", "--dataset", "instructions")
    record = assert_exactly_one_anchor(env)
    assert record["tx_hash"] == first  # the signed transaction was resumed, not a new one sent


def background_run(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([ANCHORLAKE, "--quiet", "run", "--dataset", "instructions"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_pending(env: dict[str, str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return intent(env)["attempts"][-1]["tx_hash"]
        except (FileNotFoundError, KeyError, ValueError):
            time.sleep(0.1)
    raise AssertionError("the run never signed an anchor transaction")


class Miner(threading.Thread):
    """Mines a block every `interval` seconds until stopped (automine is off)."""

    def __init__(self, node: Anvil, interval: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.node, self.interval, self.stopped = node, interval, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            rpc(self.node, "evm_mine")


def finish(proc: subprocess.Popen, miner: Miner | None = None, timeout: float = 180) -> None:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if miner:
            miner.stopped.set()
    assert proc.returncode == 0, err


def test_a_transaction_dropped_from_the_mempool_is_sent_again(env: dict[str, str], chain: Anvil) -> None:
    rpc(chain, "evm_setAutomine", False)
    proc = background_run(env | {"ANCHORLAKE_REPLACE_AFTER": "600"})
    tx_hash = wait_for_pending(env)
    time.sleep(0.5)
    rpc(chain, "anvil_dropTransaction", tx_hash)
    assert rpc(chain, "eth_getTransactionByHash", tx_hash) is None
    time.sleep(3)  # the stage notices the drop and sends the same signed transaction again
    miner = Miner(chain)
    miner.start()
    finish(proc, miner)
    record = assert_exactly_one_anchor(env)
    assert record["tx_hash"] == tx_hash


def test_fees_too_low_are_bumped_until_the_anchor_is_mined(env: dict[str, str], chain: Anvil) -> None:
    rpc(chain, "evm_setAutomine", False)
    proc = background_run(env | {"ANCHORLAKE_REPLACE_AFTER": "1"})
    first = wait_for_pending(env)
    rpc(chain, "anvil_setNextBlockBaseFeePerGas", hex(2000 * 10**9))  # a fee spike the tx cannot pay
    miner = Miner(chain)
    miner.start()
    finish(proc, miner)
    record = assert_exactly_one_anchor(env)
    attempts = intent(env)["attempts"]
    assert len(attempts) >= 2 and record["tx_hash"] != first
    assert record["tx_hash"] in {a["tx_hash"] for a in attempts}
    assert attempts[-1]["max_fee"] > attempts[0]["max_fee"]


def test_a_reorganisation_while_waiting_for_confirmations_re_anchors(env: dict[str, str], chain: Anvil) -> None:
    rpc(chain, "evm_setAutomine", False)
    proc = background_run(env | {"ANCHORLAKE_CONFIRMATIONS": "3", "ANCHORLAKE_REPLACE_AFTER": "600"})
    tx_hash = wait_for_pending(env)
    snapshot = rpc(chain, "evm_snapshot")
    rpc(chain, "evm_mine")
    receipt = rpc(chain, "eth_getTransactionReceipt", tx_hash)
    assert receipt is not None  # included, one confirmation
    dropped_block = receipt["blockHash"]
    time.sleep(1)
    rpc(chain, "evm_revert", snapshot)  # the block with the anchor is gone
    assert rpc(chain, "eth_getTransactionReceipt", tx_hash) is None
    time.sleep(3)
    miner = Miner(chain)
    miner.start()
    finish(proc, miner)
    record = assert_exactly_one_anchor(env)
    assert record["block_hash"] != dropped_block and record["confirmations"] >= 3


def test_the_rpc_down_then_back(env: dict[str, str], chain: Anvil) -> None:
    port = chain.port
    chain.stop()
    down = cli(env, "run", "--dataset", "instructions", check=False)
    assert down.returncode == 3 and "cannot be reached" in down.stderr and "Traceback" not in down.stderr
    restarted = Anvil(workdir=chain.workdir, state=chain.state, port=port).start()
    try:
        cli(env, "run", "--dataset", "instructions")
        assert_exactly_one_anchor(env)
    finally:
        restarted.stop()


def test_status_reports_an_anchor_the_chain_no_longer_holds(env: dict[str, str], chain: Anvil) -> None:
    snapshot = rpc(chain, "evm_snapshot")
    cli(env, "run", "--dataset", "instructions")
    assert_exactly_one_anchor(env)
    rpc(chain, "evm_revert", snapshot)  # a reorganisation deeper than the confirmations waited for
    proc = cli(env, "--json", "--quiet", "status", "--dataset", "instructions", check=False)
    assert proc.returncode == 1
    state = json.loads(proc.stdout)["batches"][0]
    assert not state["anchored"] and state["anchor_state"].startswith("ANCHOR LOST")
    assert anchored_events(env) == []

    # The next run anchors the batch again (anchor.json, write-once, keeps naming the lost tx).
    cli(env, "run", "--dataset", "instructions")
    assert len(anchored_events(env)) == 1
    state = cli_json(env, "status", "--dataset", "instructions")["batches"][0]
    assert state["anchored"] and "re-anchored after a reorganisation" in state["anchor_state"]
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    published = lake / "receipts/instructions/000000"
    [name] = json.loads((published / "index.json").read_text())["files"]  # a small batch: one file
    receipts = published / f"{name}.jsonl.gz"
    assert cli(env, "verify", str(receipts), *trust_args(env, lake.parent)).returncode == 0
    # Every reader names the one current anchor: status and the receipts (rewritten when it moved).
    lost = json.loads((lake / "batches/instructions/000000/anchor.json").read_text())
    current = json.loads((lake / "state/instructions/000000/anchor-current.json").read_text())
    assert current["block_hash"] != lost["block_hash"] and state["tx_hash"] == current["tx_hash"]
    named = {(a["tx_hash"], a["block_number"]) for a in (json.loads(line)["anchor"] for line in gzip.open(receipts))}
    assert named == {(current["tx_hash"], current["block_number"])}
    # The rewards root went with the reorganisation too: published again and recorded beside the anchor.
    republished = json.loads((lake / "state/instructions/000000/rewards-current.json").read_text())
    assert republished["root"] == json.loads((lake / "batches/instructions/000000/manifest.json").read_text())["rewards"]["root"]


POOR_KEY = "0x" + "42" * 32  # no funds on the devnet


def test_a_key_without_the_anchorer_role_fails_clearly(env: dict[str, str]) -> None:
    proc = cli(env | {"ANCHORLAKE_ANCHORER_KEY": OUTSIDER_KEY}, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "does not give ANCHORER_ROLE to the configured key" in proc.stderr
    assert "Traceback" not in proc.stderr and OUTSIDER_KEY[2:] not in proc.stderr + proc.stdout
    assert anchored_events(env) == []


def test_the_workers_run_without_the_admin_key_and_refuse_to_guess_its_account(env: dict[str, str]) -> None:
    """The admin key stays cold: a run needs only the admin's address, to check the deployment
    record; with neither, it will not guess who deployed the contracts and signs nothing."""
    from eth_account import Account

    workers = {k: v for k, v in env.items() if k != "ANCHORLAKE_ADMIN_KEY"}
    proc = cli(workers, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "cannot tell who deployed" in proc.stderr, proc.stderr
    assert anchored_events(env) == []
    admin = Account.from_key(DEVNET_KEYS["admin"]).address
    cli(workers | {"ANCHORLAKE_ADMIN_ADDRESS": admin}, "run", "--dataset", "instructions")
    assert len(anchored_events(env)) == 1


def test_a_key_without_funds_fails_clearly(env: dict[str, str], chain: Anvil) -> None:
    from eth_account import Account

    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    address = json.loads((lake / "deployments/31337.json").read_text())["BatchAnchor"]
    w3 = Web3(Web3.HTTPProvider(chain.url))
    contract = w3.eth.contract(address=Web3.to_checksum_address(address), abi=json.loads(
        (REPO / "anchoring/build/contracts.json").read_text())["contracts"]["BatchAnchor"]["abi"])
    poor = Account.from_key(POOR_KEY).address
    role = contract.functions.ANCHORER_ROLE().call()
    tx = contract.functions.grantRole(role, poor).transact({"from": w3.eth.accounts[0]})
    w3.eth.wait_for_transaction_receipt(tx)
    rotated = {"ANCHORLAKE_ANCHORER_KEY": POOR_KEY, "ANCHORLAKE_ADMIN_ADDRESS": w3.eth.accounts[0]}
    proc = cli(env | rotated, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "no funds" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and POOR_KEY[2:] not in proc.stderr + proc.stdout


def test_a_deployment_record_for_another_chain_is_refused(env: dict[str, str]) -> None:
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    path = lake / "deployments/31337.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"chain_id": 1}))
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "is for chain 1" in proc.stderr
    assert anchored_events(env) == []


@pytest.mark.parametrize(("step", "decoy"), [("anchor", "garbage bytes"),
                                             ("rewards-approve", "a transfer signed by the treasury key")])
def test_a_planted_intent_is_refused_and_nothing_is_signed_or_sent(env: dict[str, str], chain: Anvil,
                                                                   tmp_path: Path, step: str, decoy: str) -> None:
    """The attack: a lake writer plants the next batch's intent holding a transfer of the whole
    treasury to itself, hoping the next run "bumps the fee" by signing it again with the key."""
    from eth_account import Account

    cli(env, "run", "--dataset", "instructions")
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    deployment = json.loads((lake / "deployments/31337.json").read_text())
    w3 = Web3(Web3.HTTPProvider(chain.url))
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment["RewardToken"]), abi=json.loads(
        (REPO / "anchoring/build/contracts.json").read_text())["contracts"]["RewardToken"]["abi"])
    signer = Account.from_key(DEVNET_KEYS["anchorer" if step == "anchor" else "treasury"])
    treasury, attacker = Account.from_key(DEVNET_KEYS["treasury"]).address, Web3.to_checksum_address("0x" + "66" * 20)
    before, nonce = token.functions.balanceOf(treasury).call(), w3.eth.get_transaction_count(signer.address)
    theft = {"to": token.address, "data": token.functions.transfer(attacker, before)._encode_transaction_data(),
             "value": 0, "chainId": 31337, "nonce": nonce, "gas": 100_000, "maxFeePerGas": 10**10,
             "maxPriorityFeePerGas": 10**9, "type": 2}
    raw = "0x02deadbeef" if decoy == "garbage bytes" else "0x" + bytes(signer.sign_transaction(theft).raw_transaction).hex()
    planted = lake / f"state/instructions/000001/{step}-intent.json"
    planted.parent.mkdir(parents=True)
    planted.write_text(json.dumps({"format": "anchorlake.tx-intent/1", "what": step, "chain_id": 31337,
                                   "from": signer.address.lower(), "nonce": nonce, "tx": theft,
                                   "attempts": [{"tx_hash": "0x" + "00" * 32, "raw": raw, "max_fee": 10**30,
                                                 "tip": 10**30, "sent_at": 0}]}))
    contribute_one(env, tmp_path, "Explain a planted intent in two sentences.", "0x" + "12" * 20)
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and f"{step}-intent.json holds attempt 0" in proc.stderr, proc.stderr
    assert "nothing was signed or sent" in proc.stderr and "Traceback" not in proc.stderr
    assert token.functions.balanceOf(treasury).call() == before and token.functions.balanceOf(attacker).call() == 0
    assert w3.eth.get_transaction_count(signer.address, "pending") == nonce  # not one transaction left the key
    # Once the operator removes the planted file, the batch is anchored and paid as usual.
    planted.unlink()
    cli(env, "run", "--dataset", "instructions")
    assert len(anchored_events(env)) == 2


@pytest.mark.parametrize("swap", ["to another contract", "to a genuine distributor the attacker controls",
                                  "to a genuine distributor that gives our key its role"])
def test_a_swapped_deployment_record_is_refused_before_any_approve(env: dict[str, str], chain: Anvil,
                                                                   tmp_path: Path, swap: str) -> None:
    from eth_account import Account

    from anchoring.chain import Chain

    cli(env, "run", "--dataset", "instructions")
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    record = lake / "deployments/31337.json"
    deployment = json.loads(record.read_text())
    attacker_chain = Chain(chain.url, OUTSIDER_KEY)
    me, ours = attacker_chain.address, Account.from_key(DEVNET_KEYS["distributor"]).address
    owner = Account.from_key(DEVNET_KEYS["treasury"]).address
    if swap == "to another contract":
        fake = deployment["BatchAnchor"]
    else:  # anyone can deploy the genuine code, and name our key as its distributor and our treasury
        fake = attacker_chain.deploy("RewardDistributor", me, ours if "our key" in swap else me,
                                     Web3.to_checksum_address(deployment["RewardToken"]), owner)
    record.write_text(json.dumps(deployment | {"RewardDistributor": fake}))
    contribute_one(env, tmp_path, "Explain a swapped deployment in two sentences.", "0x" + "13" * 20)
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    expected = {"to another contract": "does not run anchorlake's RewardDistributor",
                "to a genuine distributor the attacker controls": "does not give DISTRIBUTOR_ROLE to the configured key",
                "to a genuine distributor that gives our key its role": "did not deploy"}[swap]
    assert proc.returncode == 1 and expected in proc.stderr and "nothing was signed" in proc.stderr, proc.stderr
    w3 = Web3(Web3.HTTPProvider(chain.url))
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment["RewardToken"]), abi=json.loads(
        (REPO / "anchoring/build/contracts.json").read_text())["contracts"]["RewardToken"]["abi"])
    assert token.functions.allowance(owner, Web3.to_checksum_address(fake)).call() == 0


def test_an_earlier_batchs_mined_intent_copied_forward_is_refused_not_waited_on(env: dict[str, str],
                                                                               tmp_path: Path) -> None:
    cli(env, "run", "--dataset", "instructions")
    state = Path(env["ANCHORLAKE_LAKE"][len("file://"):]) / "state/instructions"
    (state / "000001").mkdir(parents=True)
    # Each batch approves the same pool, so the approve call is the same: only the step differs.
    (state / "000001/rewards-approve-intent.json").write_bytes((state / "000000/rewards-approve-intent.json").read_bytes())
    contribute_one(env, tmp_path, "Explain a replayed intent in two sentences.", "0x" + "14" * 20)
    proc = cli(env, "run", "--dataset", "instructions", check=False, timeout=120)
    assert proc.returncode == 1 and "was mined but did not do this step" in proc.stderr, proc.stderr


def test_a_manifest_written_into_the_lake_is_never_anchored_or_paid(env: dict[str, str], chain: Anvil) -> None:
    """The attack: a lake writer creates the next batch's manifest with a rewards root paying
    itself the whole treasury, and waits for the operator's next run to anchor and fund it."""
    import hashlib

    from eth_account import Account

    cli(env, "run", "--dataset", "instructions")
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    first = lake / "batches/instructions/000000/manifest.json"
    forged = json.loads(first.read_text())
    forged |= {"seq": 1, "previous": {"seq": 0, "manifest_sha256": hashlib.sha256(first.read_bytes()).hexdigest()},
               "history": {"tree_size": 1, "root": hashlib.sha256(b"\0" + hashlib.sha256(first.read_bytes()).digest()).hexdigest()}}
    forged["rewards"] |= {"cumulative_total": str(10**27), "total": str(10**27 - 10**21)}
    (lake / "batches/instructions/000001").mkdir()
    (lake / "batches/instructions/000001/manifest.json").write_text(json.dumps(forged))
    w3 = Web3(Web3.HTTPProvider(chain.url))
    deployment = json.loads((lake / "deployments/31337.json").read_text())
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment["RewardToken"]), abi=json.loads(
        (REPO / "anchoring/build/contracts.json").read_text())["contracts"]["RewardToken"]["abi"])
    treasury = Account.from_key(DEVNET_KEYS["treasury"]).address
    before = token.functions.balanceOf(treasury).call()
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "carries no valid seal" in proc.stderr and "nothing was signed" in proc.stderr, \
        proc.stderr
    assert len(anchored_events(env)) == 1 and token.functions.balanceOf(treasury).call() == before
    # A seal copied from another batch does not hold either: it binds the dataset, seq and manifest hash.
    seal = next((lake / "state/instructions/000000").glob("seal-*.json"))
    digest = hashlib.sha256((lake / "batches/instructions/000001/manifest.json").read_bytes()).hexdigest()
    (lake / f"state/instructions/000001/seal-{digest}.json").parent.mkdir(parents=True, exist_ok=True)
    (lake / f"state/instructions/000001/seal-{digest}.json").write_text(
        json.dumps(json.loads(seal.read_text()) | {"seq": 1, "manifest_sha256": digest}))
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "carries no valid seal" in proc.stderr, proc.stderr
    assert len(anchored_events(env)) == 1 and token.functions.balanceOf(treasury).call() == before


def test_a_doctored_earlier_batch_is_never_built_on(env: dict[str, str], chain: Anvil) -> None:
    """The attack: rewrite batch 0's rewards tree and manifest (pins and root made consistent) so
    that another contributor's cumulative amount moves to the attacker, then wait for the next
    batch to build its ledger on it and the distributor to fund it. The commit checks batch 0's
    seal first: nothing is built, nothing is paid; restored, the next run commits."""
    import hashlib

    cli(env, "run", "--dataset", "instructions")
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    manifest = lake / "batches/instructions/000000/manifest.json"
    original = manifest.read_bytes()
    tree = lake / "batches/instructions/000000/rewards-tree.json"
    original_tree = tree.read_bytes()
    dump = json.loads(original_tree)
    dump["values"][0]["value"][1], dump["values"][1]["value"][1] = (
        str(int(dump["values"][0]["value"][1]) + int(dump["values"][1]["value"][1]) - 1), "1")
    doctored = json.dumps(dump).encode()
    tree.write_bytes(doctored)
    data = json.loads(original)
    for entry in data["artifacts"]:
        if entry["path"] == "rewards-tree.json":
            entry |= {"sha256": hashlib.sha256(doctored).hexdigest(), "bytes": len(doctored)}
    manifest.write_text(json.dumps(data))
    contribute_one(env, lake.parent, "What does a doctored ledger pay?", "0x" + "15" * 20)
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "batch 1 is not built on it" in proc.stderr, proc.stderr
    assert not (lake / "batches/instructions/000001/manifest.json").exists()
    manifest.write_bytes(original)  # the sealed manifest back, the doctored tree still there
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 1 and "SHA-256 differs" in proc.stderr, proc.stderr
    tree.write_bytes(original_tree)
    assert [c["seq"] for c in cli_json(env, "run", "--dataset", "instructions")["committed"]] == [1]


@pytest.mark.parametrize("record", ["every contract", "the BatchAnchor alone"])
def test_up_refuses_a_deployment_record_the_admin_did_not_deploy(env: dict[str, str], chain: Anvil,
                                                                 record: str) -> None:
    """`up` prints the contracts users are told to trust, and deploys what the record lacks with
    the admin key: a record naming an attacker's (genuine-code) contracts stops it first."""
    from eth_account import Account

    from anchoring.chain import Chain

    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    attacker = Chain(chain.url, OUTSIDER_KEY)
    me = attacker.address
    token = attacker.deploy("RewardToken", me, 10**24)
    fake = {"BatchAnchor": attacker.deploy("BatchAnchor", me, me)}
    if record == "every contract":
        fake |= {"RewardToken": token, "RewardDistributor": attacker.deploy(
            "RewardDistributor", me, me, Web3.to_checksum_address(token), me)}
    path = lake / "deployments/31337.json"
    path.write_text(json.dumps({"format": "anchorlake.deployment/1", "chain_id": 31337} | fake))
    w3, admin = Web3(Web3.HTTPProvider(chain.url)), Account.from_key(DEVNET_KEYS["admin"]).address
    nonce = w3.eth.get_transaction_count(admin)
    proc = cli(env, "up", check=False)
    assert proc.returncode == 1 and "did not deploy" in proc.stderr and fake["BatchAnchor"] not in proc.stdout, proc
    assert w3.eth.get_transaction_count(admin) == nonce  # the admin key signed nothing


def test_status_and_run_check_anchors_against_our_batch_anchor_never_the_records(env: dict[str, str],
                                                                                chain: Anvil) -> None:
    """The attack: a lake writer anchors batch 0's values in a BatchAnchor of its own and writes an
    anchor record naming it. `status` must not call that "anchored"; `run` anchors in ours again."""
    from dataclasses import asdict

    from anchoring.batch_anchor import anchor_batch
    from anchoring.chain import Chain

    cli(env, "run", "--dataset", "instructions")
    lake = Path(env["ANCHORLAKE_LAKE"][len("file://"):])
    genuine = json.loads((lake / "batches/instructions/000000/anchor.json").read_text())
    attacker = Chain(chain.url, OUTSIDER_KEY)
    own = attacker.deploy("BatchAnchor", attacker.address, attacker.address)
    fake = anchor_batch(attacker, own, DATASET_ID, 0, bytes.fromhex(genuine["root"]), 25,
                        bytes.fromhex(genuine["manifest_sha256"]))
    record = {"format": "anchorlake.anchor/1", "dataset": "instructions"} | asdict(fake)
    (lake / "state/instructions/000000/anchor-current.json").write_text(json.dumps(record))
    proc = cli(env, "--json", "status", "--dataset", "instructions", check=False)
    state = json.loads(proc.stdout)["batches"][0]["anchor_state"]
    assert proc.returncode == 1 and state.startswith("ANCHOR LOST") and own in state, state
    cli(env, "run", "--dataset", "instructions")
    assert cli_json(env, "status", "--dataset", "instructions")["batches"][0]["anchored"] is True
    assert len(anchored_events(env)) == 1  # ours still holds its one anchor; nothing was sent again


def test_status_says_when_the_chain_cannot_be_asked_with_exit_3(env: dict[str, str]) -> None:
    cli(env, "run", "--dataset", "instructions")
    proc = cli(env | {"ANCHORLAKE_RPC_URL": "http://user:secret@127.0.0.1:9/key123"}, "status", check=False)
    assert proc.returncode == 3 and "not checked" in proc.stdout, proc
    assert "secret" not in proc.stdout + proc.stderr and "key123" not in proc.stdout + proc.stderr
