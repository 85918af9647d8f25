"""The only module that talks to the chain (SPEC §7, §8), over web3.py.

Every state-changing call checks the chain first (check-before-send), so a stage killed at any
point can be re-run: an anchor or rewards root already on chain is found and recorded, never
sent twice. Private keys never appear in logs or error messages.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_typing import HexStr

from pipeline import layout
from pipeline.config import fault_point
from pipeline.errors import (
    AlreadyExists,
    BadInput,
    ChainError,
    ConflictError,
    NotFound,
    ServiceUnavailable,
)
from pipeline.storage import Lake

log = logging.getLogger(__name__)

DEPLOYMENT_FORMAT = "anchorlake.deployment/1"
ANCHOR_FORMAT = "anchorlake.anchor/1"
REWARDS_FORMAT = "anchorlake.rewards-publication/1"
TOKEN_SUPPLY = 10**9 * 10**18
ZERO32 = b"\x00" * 32


def _artifacts() -> dict[str, Any]:
    from anchoring.compile import build

    return build()


class Chain:
    """A JSON-RPC connection and, optionally, the signing account."""

    def __init__(self, rpc_url: str, key: str | None = None, confirmations: int = 1,
                 timeout: float = 120.0) -> None:
        from web3 import Web3

        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.confirmations = confirmations
        self.timeout = timeout
        self.account = None
        if key is not None:
            from eth_account import Account

            try:
                self.account = Account.from_key(key)
            except Exception:
                raise BadInput("the anchorer key is not a valid private key") from None
        self.chain_id = self._rpc(lambda: self.w3.eth.chain_id)

    def _rpc(self, call: Callable[[], Any]) -> Any:
        import requests

        try:
            return call()
        except requests.exceptions.ConnectionError:
            raise ServiceUnavailable(f"chain RPC at {self.rpc_url} cannot be reached") from None
        except requests.exceptions.Timeout:
            raise ServiceUnavailable(f"chain RPC at {self.rpc_url} timed out") from None

    @property
    def address(self) -> Any:
        """The signing account's checksum address."""
        if self.account is None:
            raise BadInput("no signing key is configured (ANCHORLAKE_ANCHORER_KEY)")
        return self.account.address

    def contract(self, name: str, address: str) -> Any:
        return self.w3.eth.contract(address=self.w3.to_checksum_address(address), abi=_artifacts()[name]["abi"])

    def has_code(self, address: str) -> bool:
        code = self._rpc(lambda: self.w3.eth.get_code(self.w3.to_checksum_address(address)))
        return len(code) > 0

    def _revert_reason(self, error: Exception) -> str:
        """Name the custom error a revert carries, or fall back to the node's message."""
        data = getattr(error, "data", None)
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            from eth_utils import keccak

            for artifact in _artifacts().values():
                for entry in artifact["abi"]:
                    if entry.get("type") == "error":
                        signature = f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"
                        if keccak(text=signature)[:4].hex() == data[2:10]:
                            return str(entry["name"])
        return str(getattr(error, "message", None) or error)

    def transact(self, name: str, call: Any, what: str) -> Any:
        """Sign and send a contract call; wait for its receipt and confirmations."""
        from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError

        sender = self.address
        try:
            nonce = self._rpc(lambda: self.w3.eth.get_transaction_count(sender, "pending"))
            tx = self._rpc(lambda: call.build_transaction({"from": sender, "nonce": nonce, "chainId": self.chain_id}))
        except ContractLogicError as e:
            raise ChainError(f"{what} would revert: {self._revert_reason(e)}") from None
        except Web3RPCError as e:
            message = str(getattr(e, "message", e))
            if "insufficient funds" in message:
                raise ChainError(f"{what}: account {sender} has no funds to pay gas") from None
            raise ChainError(f"{what} refused by the node: {message}") from None
        signed = self.account.sign_transaction(tx)  # type: ignore[union-attr]
        try:
            tx_hash = self._rpc(lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction))
        except Web3RPCError as e:
            message = str(getattr(e, "message", e))
            if "insufficient funds" in message:
                raise ChainError(f"{what}: account {sender} has no funds to pay gas") from None
            raise ChainError(f"{what} refused by the node: {message}") from None
        try:
            receipt = self._rpc(lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout))
        except TimeExhausted:
            raise ServiceUnavailable(f"{what}: transaction {tx_hash.hex()} not mined within {self.timeout:.0f}s") from None
        if receipt["status"] != 1:
            raise ChainError(f"{what}: transaction {tx_hash.hex()} reverted")
        self.wait_confirmations(receipt["blockNumber"])
        return receipt

    def wait_confirmations(self, block_number: int) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            head = self._rpc(lambda: self.w3.eth.block_number)
            confirmations = head - block_number + 1
            if confirmations >= self.confirmations:
                return int(confirmations)
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"block {block_number} has {confirmations} of {self.confirmations} confirmations")
            time.sleep(1)

    def deploy(self, name: str, *args: Any) -> str:
        artifact = _artifacts()[name]
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = self.transact(name, factory.constructor(*args), f"deploying {name}")
        return str(receipt["contractAddress"]).lower()


# --- resumable transactions ------------------------------------------------------------------

INTENT_FORMAT = "anchorlake.tx-intent/1"
FEE_BUMP_NUM, FEE_BUMP_DEN = 5, 4  # +25%: above the 10-12.5% nodes require of a replacement


@dataclass
class IntentStore:
    """Where a resumable transaction keeps its intent (nonce, signed attempts) between runs."""

    load: Callable[[], dict[str, Any] | None]
    save: Callable[[dict[str, Any]], None]


def _fees(chain: Chain) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas) for EIP-1559: twice the base fee plus the tip."""
    block = chain._rpc(lambda: chain.w3.eth.get_block("latest"))
    base = int(block.get("baseFeePerGas") or 0)
    try:
        tip = int(chain._rpc(lambda: chain.w3.eth.max_priority_fee))
    except ServiceUnavailable:
        raise
    except Exception:
        tip = 10**9
    tip = max(tip, 1)
    return 2 * base + tip, tip


def _sign(chain: Chain, tx: dict[str, Any]) -> tuple[str, str]:
    signed = chain.account.sign_transaction(tx)  # type: ignore[union-attr]
    return "0x" + bytes(signed.hash).hex(), "0x" + bytes(signed.raw_transaction).hex()


def _broadcast(chain: Chain, raw: str, what: str) -> str:
    """Send a signed transaction; returns "sent", "known", "nonce_used" or "underpriced"."""
    from web3.exceptions import Web3RPCError

    try:
        chain._rpc(lambda: chain.w3.eth.send_raw_transaction(HexStr(raw)))
        return "sent"
    except Web3RPCError as e:
        message = str(getattr(e, "message", e)).lower()
        if "already known" in message or "already imported" in message:
            return "known"
        if "nonce too low" in message or "nonce has already been used" in message:
            return "nonce_used"
        if "underpriced" in message or "fee" in message and ("base fee" in message or "too low" in message):
            return "underpriced"
        if "insufficient funds" in message:
            raise ChainError(f"{what}: the sending account has no funds to pay gas") from None
        raise ChainError(f"{what} refused by the node: {getattr(e, 'message', e)}") from None


def _receipt(chain: Chain, tx_hash: str) -> Any:
    from web3.exceptions import TransactionNotFound

    try:
        return chain._rpc(lambda: chain.w3.eth.get_transaction_receipt(HexStr(tx_hash)))
    except TransactionNotFound:
        return None


def ensure_transaction(chain: Chain, name: str, call: Any, what: str, is_done: Callable[[], bool],
                       intents: IntentStore, replace_after: float = 30.0, timeout: float = 600.0,
                       poll: float = 0.5) -> None:
    """Bring the chain to a state where `is_done()` holds, sending `call` at most once in effect.

    The intent (nonce and every signed attempt) is saved before each broadcast, so a run killed
    at any instant resumes the same transaction instead of sending a second one. A transaction
    pending longer than `replace_after` seconds, or refused as underpriced, is replaced with
    25% higher fees and the same nonce. After inclusion it waits for `chain.confirmations` and
    checks the block is still canonical; if a reorganisation dropped it, it sends again.
    """
    from web3.exceptions import ContractLogicError

    deadline = time.monotonic() + timeout
    sender = chain.address
    while True:
        if is_done():
            return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{what}: not confirmed within {timeout:.0f}s")
        intent = intents.load()
        latest_nonce = int(chain._rpc(lambda: chain.w3.eth.get_transaction_count(sender, "latest")))
        if intent is not None:
            mined = _mined_attempt(chain, intent)
            if mined is not None:
                receipt = mined
                if receipt["status"] != 1:
                    raise ChainError(f"{what}: transaction {receipt['transactionHash'].hex()} reverted")
                continue  # is_done() should hold now
            if latest_nonce > int(intent["nonce"]):
                intent = None  # the nonce went to another transaction; ours can never be mined
        if intent is None:
            try:
                tx = chain._rpc(lambda: call.build_transaction({"from": sender, "chainId": chain.chain_id}))
            except ContractLogicError as e:
                raise ChainError(f"{what} would revert: {chain._revert_reason(e)}") from None
            max_fee, tip = _fees(chain)
            nonce = int(chain._rpc(lambda: chain.w3.eth.get_transaction_count(sender, "pending")))
            tx.update({"nonce": nonce, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip,
                       "gas": int(tx["gas"] * 6 // 5), "type": 2})
            tx.pop("gasPrice", None)
            tx_hash, raw = _sign(chain, tx)
            intent = {"format": INTENT_FORMAT, "what": what, "chain_id": chain.chain_id, "from": sender.lower(),
                      "nonce": nonce, "tx": _jsonable(tx), "attempts": [
                          {"tx_hash": tx_hash, "raw": raw, "max_fee": max_fee, "tip": tip, "sent_at": time.time()}]}
            intents.save(intent)
            fault_point("chain.after_sign")
        status = _broadcast(chain, intent["attempts"][-1]["raw"], what)
        fault_point("chain.after_broadcast")
        if status == "nonce_used":
            continue  # mined meanwhile (ours or another): the loop sorts out which
        if status == "underpriced":
            intent = _bump(chain, intent)
            intents.save(intent)
            continue
        _wait_or_bump(chain, intent, intents, replace_after, deadline, poll)


def ensure_confirmed(chain: Chain, name: str, call: Any, what: str, is_done: Callable[[], bool],
                     find_event: Callable[[], Any], intents: IntentStore, replace_after: float = 30.0,
                     timeout: float = 600.0) -> Any:
    """ensure_transaction, then wait until the event that did it has `chain.confirmations` on the
    canonical chain; if a reorganisation removes its block meanwhile, start over (send again).
    Returns the confirmed event."""
    deadline = time.monotonic() + timeout
    while True:
        ensure_transaction(chain, name, call, what, is_done, intents, replace_after,
                           max(deadline - time.monotonic(), 1.0))
        event = find_event()
        if _confirmed(chain, event, deadline) and is_done():
            return event


def _jsonable(tx: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in tx.items():
        out[key] = value if isinstance(value, (int, str)) else "0x" + bytes(value).hex()
    return out


def _known(chain: Chain, tx_hash: str) -> bool:
    from web3.exceptions import TransactionNotFound

    try:
        return chain._rpc(lambda: chain.w3.eth.get_transaction(HexStr(tx_hash))) is not None
    except TransactionNotFound:
        return False


def _mined_attempt(chain: Chain, intent: dict[str, Any]) -> Any:
    for attempt in intent["attempts"]:
        receipt = _receipt(chain, attempt["tx_hash"])
        if receipt is not None:
            return receipt
    return None


def _confirmed(chain: Chain, receipt: Any, deadline: float) -> bool:
    """Wait for confirmations; False if the block left the canonical chain meanwhile."""
    number, expected = int(receipt["blockNumber"]), bytes(receipt["blockHash"])
    while True:
        head = int(chain._rpc(lambda: chain.w3.eth.block_number))
        block = chain._rpc(lambda: chain.w3.eth.get_block(number)) if head >= number else None
        if block is None or bytes(block["hash"]) != expected:
            log.warning("block %d with our transaction was reorganised away; sending again", number)
            return False
        if head - number + 1 >= chain.confirmations:
            return True
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"block {number} has {head - number + 1} of {chain.confirmations} confirmations")
        time.sleep(0.25)


def _bump(chain: Chain, intent: dict[str, Any]) -> dict[str, Any]:
    last = intent["attempts"][-1]
    market_fee, market_tip = _fees(chain)
    tip = max(last["tip"] * FEE_BUMP_NUM // FEE_BUMP_DEN + 1, market_tip)
    max_fee = max(last["max_fee"] * FEE_BUMP_NUM // FEE_BUMP_DEN + 1, market_fee, tip)
    tx = dict(intent["tx"], maxFeePerGas=max_fee, maxPriorityFeePerGas=tip)
    tx_hash, raw = _sign(chain, _native(tx))
    log.info("replacing %s with fees %d/%d", last["tx_hash"], max_fee, tip)
    attempts = intent["attempts"] + [{"tx_hash": tx_hash, "raw": raw, "max_fee": max_fee, "tip": tip,
                                      "sent_at": time.time()}]
    return dict(intent, tx=tx, attempts=attempts)


def _native(tx: dict[str, Any]) -> dict[str, Any]:
    return {k: (bytes.fromhex(v[2:]) if k == "data" and isinstance(v, str) else v) for k, v in tx.items()}


def _wait_or_bump(chain: Chain, intent: dict[str, Any], intents: IntentStore, replace_after: float,
                  deadline: float, poll: float) -> None:
    """Wait until an attempt is mined (then return) or replace it after `replace_after` seconds."""
    sent = checked = time.monotonic()
    while time.monotonic() < deadline:
        if _mined_attempt(chain, intent) is not None:
            return
        if time.monotonic() - checked > 2.0:
            checked = time.monotonic()
            if not _known(chain, intent["attempts"][-1]["tx_hash"]):
                log.warning("transaction %s was dropped from the mempool; sending it again",
                            intent["attempts"][-1]["tx_hash"])
                if _broadcast(chain, intent["attempts"][-1]["raw"], intent["what"]) == "nonce_used":
                    return
        if time.monotonic() - sent > replace_after:
            bumped = _bump(chain, intent)
            intents.save(bumped)
            status = _broadcast(chain, bumped["attempts"][-1]["raw"], intent["what"])
            if status in ("nonce_used",):
                return
            intent, sent = bumped, time.monotonic()
            continue
        time.sleep(poll)


# --- deployments ------------------------------------------------------------------------


def load_deployment(lake: Lake, chain_id: int) -> dict[str, Any] | None:
    key = layout.deployment(chain_id)
    data = lake.read_json(key, DEPLOYMENT_FORMAT, missing_ok=True)
    if data is not None and data.get("chain_id") != chain_id:
        raise ConflictError(f"{lake.uri(key)} is for chain {data.get('chain_id')}, the RPC serves chain {chain_id}")
    return data


def ensure_deployment(chain: Chain, lake: Lake, token: str | None = None) -> dict[str, Any]:
    """Deploy whatever `deployments/<chain_id>.json` lacks; return the deployment.

    Contracts listed there must have code on the chain; a devnet that lost its state is
    reported, not silently redeployed over.
    """
    deployment = load_deployment(lake, chain.chain_id) or {"format": DEPLOYMENT_FORMAT, "chain_id": chain.chain_id}
    for name in ("RewardToken", "BatchAnchor", "RewardDistributor"):
        address = deployment.get(name)
        if address and not chain.has_code(address):
            raise ConflictError(
                f"deployments/{chain.chain_id}.json names {name} at {address}, but the chain has no code there "
                "(was the devnet reset? `anchorlake down --purge` starts the embedded default afresh)")
    me = chain.address
    if token and not deployment.get("RewardToken"):
        deployment["RewardToken"] = token.lower()
    steps: list[tuple[str, Callable[[], tuple[Any, ...]]]] = [
        ("RewardToken", lambda: (me, TOKEN_SUPPLY)),
        ("BatchAnchor", lambda: (me, me)),
        ("RewardDistributor", lambda: (me, me, chain.w3.to_checksum_address(deployment["RewardToken"]))),
    ]
    for name, args in steps:
        if deployment.get(name):
            continue
        deployment[name] = chain.deploy(name, *args())
        log.info("deployed %s at %s on chain %d", name, deployment[name], chain.chain_id)
        lake.write(layout.deployment(chain.chain_id), json.dumps(deployment, indent=2).encode())
    return deployment


def require_deployment(chain: Chain, lake: Lake, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    deployment = dict(load_deployment(lake, chain.chain_id) or {})
    deployment.update({k: v.lower() for k, v in (overrides or {}).items()})
    if not deployment.get("BatchAnchor"):
        raise NotFound(f"no contracts are deployed on chain {chain.chain_id}: run `anchorlake up` first")
    return deployment


# --- anchoring --------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchoredBatch:
    root: bytes
    tree_size: int
    manifest_hash: bytes
    anchored_at: int

    @property
    def exists(self) -> bool:
        return self.manifest_hash != ZERO32


def read_batch(chain: Chain, address: str, dataset_id: bytes, seq: int) -> AnchoredBatch:
    contract = chain.contract("BatchAnchor", address)
    root, size, manifest_hash, at = chain._rpc(lambda: contract.functions.batch(dataset_id, seq).call())
    return AnchoredBatch(bytes(root), int(size), bytes(manifest_hash), int(at))


def next_anchor_seq(chain: Chain, address: str, dataset_id: bytes) -> int:
    contract = chain.contract("BatchAnchor", address)
    return int(chain._rpc(lambda: contract.functions.nextSeq(dataset_id).call()))


def _find_event(chain: Chain, contract: Any, event: str, dataset_id: bytes, seq: int) -> Any:
    logs = chain._rpc(lambda: getattr(contract.events, event).get_logs(
        argument_filters={"datasetId": dataset_id, "seq": seq}, from_block=0))
    if not logs:
        raise ChainError(f"{event} for seq {seq} is in contract state but no event was found")
    return logs[-1]


def anchor_batch(chain: Chain, address: str, dataset_id: bytes, seq: int, root: bytes, tree_size: int,
                 manifest_hash: bytes, intents: IntentStore | None = None, replace_after: float = 30.0,
                 timeout: float = 600.0) -> dict[str, Any]:
    """Make sure (dataset_id, seq) is anchored with exactly these values; return the anchor record.

    Check-before-send: values already on chain are recorded, not sent again. Raises
    ConflictError if the chain holds other values for the seq, ChainError if an earlier seq is
    not anchored yet or the key lacks the anchorer role.
    """
    contract = chain.contract("BatchAnchor", address)
    wanted = (root, tree_size, manifest_hash)

    def done() -> bool:
        onchain = read_batch(chain, address, dataset_id, seq)
        if not onchain.exists:
            return False
        if (onchain.root, onchain.tree_size, onchain.manifest_hash) != wanted:
            raise ConflictError(
                f"seq {seq} is anchored with root {onchain.root.hex()}, size {onchain.tree_size}, manifest "
                f"{onchain.manifest_hash.hex()}; the lake has root {root.hex()}, size {tree_size}, manifest "
                f"{manifest_hash.hex()}")
        return True

    if not done():
        expected = next_anchor_seq(chain, address, dataset_id)
        if expected != seq:
            raise ChainError(f"cannot anchor seq {seq}: the contract expects seq {expected} next")
    memory: dict[str, Any] = {}
    store = intents or IntentStore(lambda: memory.get("intent"), lambda i: memory.__setitem__("intent", i))
    event = ensure_confirmed(chain, "BatchAnchor", contract.functions.anchor(dataset_id, seq, root, tree_size,
                                                                              manifest_hash),
                             f"anchoring seq {seq}", done,
                             lambda: _find_event(chain, contract, "BatchAnchored", dataset_id, seq),
                             store, replace_after, timeout)
    head = int(chain._rpc(lambda: chain.w3.eth.block_number))
    confirmations = head - int(event["blockNumber"]) + 1
    fault_point("chain.before_record")
    return {
        "format": ANCHOR_FORMAT,
        "chain_id": chain.chain_id,
        "contract": address.lower(),
        "dataset_id": "0x" + dataset_id.hex(),
        "seq": seq,
        "root": root.hex(),
        "manifest_sha256": manifest_hash.hex(),
        "tx_hash": "0x" + bytes(event["transactionHash"]).hex(),
        "block_number": int(event["blockNumber"]),
        "block_hash": "0x" + bytes(event["blockHash"]).hex(),
        "confirmations": confirmations,
    }


def holds_anchor(chain: Chain, record: dict[str, Any]) -> bool:
    """Whether the chain still holds an anchor record: its values in the contract and its block canonical."""
    onchain = read_batch(chain, record["contract"], bytes.fromhex(record["dataset_id"][2:]), int(record["seq"]))
    return (onchain.exists and onchain.root.hex() == record["root"]
            and onchain.manifest_hash.hex() == record["manifest_sha256"]
            and block_hash(chain, int(record["block_number"])) == record["block_hash"])


def block_hash(chain: Chain, number: int) -> str | None:
    """Hash of the canonical block at `number`, or None if the chain is not that long."""
    from web3.exceptions import BlockNotFound

    try:
        block = chain._rpc(lambda: chain.w3.eth.get_block(number))
    except BlockNotFound:
        return None
    return "0x" + bytes(block["hash"]).hex() if block else None


# --- rewards ----------------------------------------------------------------------------


def published_root(chain: Chain, address: str, dataset_id: bytes, seq: int) -> bytes | None:
    contract = chain.contract("RewardDistributor", address)
    next_seq = int(chain._rpc(lambda: contract.functions.nextSeq(dataset_id).call()))
    if seq >= next_seq:
        return None
    return bytes(chain._rpc(lambda: contract.functions.rootAt(dataset_id, seq).call()))


def publish_rewards(chain: Chain, deployment: dict[str, Any], dataset_id: bytes, seq: int, root: bytes,
                    cumulative_total: int, intents: Callable[[str], IntentStore] | None = None,
                    replace_after: float = 30.0, timeout: float = 600.0, points: bool = False) -> dict[str, Any]:
    """Publish the rewards root of `seq` (check-before-send) and fund the increase; for a
    dataset paid in off-chain points (`points`), publish the ledger root and move no token.

    `intents(step)` gives the intent store of each step ("approve", "publish").
    """
    address = deployment["RewardDistributor"]
    distributor = chain.contract("RewardDistributor", address)
    memory: dict[str, Any] = {}

    def store(step: str) -> IntentStore:
        if intents is not None:
            return intents(step)
        return IntentStore(lambda: memory.get(step), lambda i: memory.__setitem__(step, i))

    def published() -> bool:
        return published_root(chain, address, dataset_id, seq) is not None

    if not published():
        expected = int(chain._rpc(lambda: distributor.functions.nextSeq(dataset_id).call()))
        if expected != seq:
            raise ChainError(f"cannot publish rewards for seq {seq}: the contract expects seq {expected} next")
        previous = int(chain._rpc(lambda: distributor.functions.cumulativeTotal(dataset_id).call()))
        increase = cumulative_total - previous
        if increase < 0:
            raise ConflictError(f"cumulative total {cumulative_total} is below the published {previous}")
        if increase and not points:
            token = chain.contract("RewardToken", deployment["RewardToken"])
            spender = chain.w3.to_checksum_address(address)

            def approved() -> bool:
                return int(chain._rpc(lambda: token.functions.allowance(chain.address, spender).call())) >= increase

            ensure_transaction(chain, "RewardToken", token.functions.approve(spender, increase),
                               "approving reward funds", lambda: published() or approved(), store("approve"),
                               replace_after, timeout)
    publish = distributor.functions.publishPoints if points else distributor.functions.publish
    ensure_confirmed(chain, "RewardDistributor", publish(dataset_id, seq, root, cumulative_total),
                     f"publishing rewards for seq {seq}", published,
                     lambda: _find_event(chain, distributor, "RewardsPublished", dataset_id, seq),
                     store("publish"), replace_after, timeout)
    existing = published_root(chain, address, dataset_id, seq)
    if existing != root:
        raise ConflictError(f"rewards for seq {seq} are published with root {existing.hex() if existing else None}, "
                            f"the lake has {root.hex()}")
    event = _find_event(chain, distributor, "RewardsPublished", dataset_id, seq)
    return {
        "format": REWARDS_FORMAT,
        "chain_id": chain.chain_id,
        "contract": address.lower(),
        "seq": seq,
        "root": root.hex(),
        "cumulative_total": str(cumulative_total),
        "tx_hash": "0x" + bytes(event["transactionHash"]).hex(),
        "block_number": int(event["blockNumber"]),
    }


def claim(chain: Chain, address: str, dataset_id: bytes, account: str, cumulative_amount: int,
          proof: list[bytes]) -> Any:
    distributor = chain.contract("RewardDistributor", address)
    return chain.transact("RewardDistributor", distributor.functions.claim(
        dataset_id, chain.w3.to_checksum_address(account), cumulative_amount, proof), f"claiming for {account}")


def claimed(chain: Chain, address: str, dataset_id: bytes, account: str) -> int:
    distributor = chain.contract("RewardDistributor", address)
    return int(chain._rpc(lambda: distributor.functions.claimed(dataset_id, chain.w3.to_checksum_address(account)).call()))


def token_balance(chain: Chain, token: str, account: str) -> int:
    contract = chain.contract("RewardToken", token)
    return int(chain._rpc(lambda: contract.functions.balanceOf(chain.w3.to_checksum_address(account)).call()))


def create_once(lake: Lake, key: str, data: bytes) -> None:
    """Create a write-once record; an identical existing one is fine, a different one is a conflict."""
    try:
        lake.create(key, data)
    except AlreadyExists:
        existing = json.loads(lake.read(key))
        fresh = json.loads(data)
        for field in ("root", "manifest_sha256", "tx_hash", "seq"):
            if field in fresh and existing.get(field) != fresh.get(field):
                raise ConflictError(f"{lake.uri(key)} exists with {field} {existing.get(field)}, not {fresh.get(field)}") from None
