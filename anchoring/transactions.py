"""Resumable transactions: each state change is sent at most once in effect, whatever kills the
sender or the chain does meanwhile.

The intent (nonce and every signed attempt) is saved through an `IntentStore` before each
broadcast, so a run killed at any instant resumes the same transaction instead of sending a
second one. A saved intent is never trusted: the transaction is always rebuilt from the call the
pipeline makes now, and every saved attempt must decode to exactly it (to, data, value, chain,
sender, nonce) or the intent is refused before anything is signed; fee bumps re-sign the
decoded transaction, never a transaction read from the store. Pending too long or refused as underpriced: replaced with 25% higher fees and the
same nonce. Dropped from the mempool: sent again. After inclusion: confirmations on the
canonical chain; if a reorganisation removes the block, sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from eth_typing import HexStr

from anchoring.chain import Chain
from pipeline.config import fault_point
from pipeline.errors import ChainError, ServiceUnavailable

log = logging.getLogger(__name__)

FEE_BUMP_NUM, FEE_BUMP_DEN = 5, 4  # +25%: above the 10-12.5% nodes require of a replacement
DEFAULT_TIP = 10**9


class IntentRefused(ChainError):
    """A saved intent is not a transaction this pipeline builds: nothing is signed or sent."""


class IntentStore(Protocol):
    """Where a resumable transaction keeps its intent (nonce, signed attempts) between runs;
    str() of it names where, for errors."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, intent: dict[str, Any]) -> None: ...


class MemoryIntents:
    """An IntentStore for callers with nothing to resume (tests, benchmarks)."""

    def __init__(self) -> None:
        self.intent: dict[str, Any] | None = None

    def __str__(self) -> str:
        return "the in-memory intent"

    def load(self) -> dict[str, Any] | None:
        return self.intent

    def save(self, intent: dict[str, Any]) -> None:
        self.intent = intent


def _fees(chain: Chain) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas) for EIP-1559: twice the base fee plus the tip."""
    block = chain.rpc(lambda: chain.w3.eth.get_block("latest"))
    base = int(block.get("baseFeePerGas") or 0)
    try:
        tip = int(chain.rpc(lambda: chain.w3.eth.max_priority_fee))
    except ServiceUnavailable:
        raise
    except Exception:
        tip = DEFAULT_TIP
    tip = max(tip, 1)
    return 2 * base + tip, tip


def _sign(chain: Chain, tx: dict[str, Any]) -> tuple[str, str]:
    signed = chain.account.sign_transaction(tx)  # type: ignore[union-attr]
    return "0x" + bytes(signed.hash).hex(), "0x" + bytes(signed.raw_transaction).hex()


def _broadcast(chain: Chain, raw: str, what: str) -> str:
    """Send a signed transaction; returns "sent", "known", "nonce_used" or "underpriced"."""
    from web3.exceptions import Web3RPCError

    try:
        chain.rpc(lambda: chain.w3.eth.send_raw_transaction(HexStr(raw)))
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
        return chain.rpc(lambda: chain.w3.eth.get_transaction_receipt(HexStr(tx_hash)))
    except TransactionNotFound:
        return None


def _new_intent(chain: Chain, call: Any, what: str) -> dict[str, Any]:
    """Build, price and sign the transaction; the intent to save before broadcasting it."""
    from web3.exceptions import ContractLogicError

    sender = chain.address
    try:
        tx = chain.rpc(lambda: call.build_transaction({"from": sender, "chainId": chain.chain_id}))
    except ContractLogicError as e:
        raise ChainError(f"{what} would revert: {chain.revert_reason(e)}") from None
    max_fee, tip = _fees(chain)
    nonce = int(chain.rpc(lambda: chain.w3.eth.get_transaction_count(sender, "pending")))
    tx.update({"nonce": nonce, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip,
               "gas": int(tx["gas"] * 6 // 5), "type": 2})
    tx.pop("gasPrice", None)
    tx_hash, raw = _sign(chain, tx)
    return {"what": what, "chain_id": chain.chain_id, "from": sender.lower(), "nonce": nonce, "attempts": [
        {"tx_hash": tx_hash, "raw": raw, "max_fee": max_fee, "tip": tip, "sent_at": time.time()}]}


def _expected(chain: Chain, call: Any) -> tuple[str, bytes, int, int, str]:
    """(to, data, value, chain id, sender) of the transaction the pipeline's `call` makes."""
    return (str(call.address).lower(), bytes.fromhex(call._encode_transaction_data()[2:]), 0, chain.chain_id,
            str(chain.address).lower())


def _decode(raw: str) -> dict[str, Any]:
    """The fields and the sender of signed transaction bytes."""
    from eth_account import Account
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    tx = dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())
    tx["from"] = str(Account.recover_transaction(raw)).lower()
    return tx


def _checked(intent: dict[str, Any], expected: tuple[str, bytes, int, int, str], intents: IntentStore,
             what: str) -> dict[str, Any]:
    """The intent rebuilt from what its signed attempts decode to, if every one is exactly the
    expected transaction with the intent's nonce; IntentRefused naming the store otherwise."""
    from eth_utils import keccak

    attempts = []
    for n, attempt in enumerate(intent["attempts"]):
        try:
            raw = str(attempt["raw"])
            tx = _decode(raw)
            fields = (bytes(tx["to"]).hex(), bytes(tx["data"]), tx["value"], tx["chainId"], tx["from"])
        except Exception:
            raise IntentRefused(f"{what}: {intents} holds attempt {n}, which is not a signed transaction; "
                                "nothing was signed or sent (check it and remove it to go on)") from None
        if ("0x" + fields[0], *fields[1:]) != expected or tx["nonce"] != intent["nonce"]:
            raise IntentRefused(f"{what}: {intents} holds attempt {n}, which is not the transaction this pipeline "
                                "builds; nothing was signed or sent (check it and remove it to go on)")
        attempts.append({"tx_hash": "0x" + keccak(hexstr=raw).hex(), "raw": raw, "max_fee": tx["maxFeePerGas"],
                         "tip": tx["maxPriorityFeePerGas"], "gas": tx["gas"], "sent_at": attempt.get("sent_at", 0)})
    if not attempts:
        raise IntentRefused(f"{what}: {intents} holds no signed attempt; nothing was signed or sent")
    return dict(intent, attempts=attempts)


def _resumable(chain: Chain, intent: dict[str, Any] | None, what: str) -> tuple[dict[str, Any] | None, bool]:
    """(the checked intent still worth resuming or None, whether one of its attempts was mined)."""
    if intent is None:
        return None, False
    mined = _mined_attempt(chain, intent)
    if mined is not None:
        if mined["status"] != 1:
            raise ChainError(f"{what}: transaction {mined['transactionHash'].hex()} reverted")
        return intent, True
    latest_nonce = int(chain.rpc(lambda: chain.w3.eth.get_transaction_count(chain.address, "latest")))
    if latest_nonce > int(intent["nonce"]):
        return None, False  # the nonce went to another transaction; ours can never be mined
    return intent, False


def ensure_transaction(chain: Chain, call: Any, what: str, is_done: Callable[[], bool], intents: IntentStore,
                       replace_after: float = 30.0, timeout: float = 600.0, poll: float = 0.5) -> None:
    """Bring the chain to a state where `is_done()` holds, sending `call` at most once in effect."""
    deadline = time.monotonic() + timeout
    while True:
        if is_done():
            return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{what}: not confirmed within {timeout:.0f}s")
        saved = intents.load()
        if saved is not None:
            saved = _checked(saved, _expected(chain, call), intents, what)
        intent, mined = _resumable(chain, saved, what)
        if mined:
            if not is_done():
                raise IntentRefused(f"{what}: {intents} holds a transaction that was mined but did not do this "
                                    "step (an earlier step's?); nothing was signed or sent")
            return
        if intent is None:
            intent = _new_intent(chain, call, what)
            intents.save(intent)
            fault_point("chain.after_sign")
        status = _broadcast(chain, intent["attempts"][-1]["raw"], what)
        fault_point("chain.after_broadcast")
        if status == "nonce_used":
            continue  # mined meanwhile (ours or another): the loop sorts out which
        if status == "underpriced":
            intents.save(_bump(chain, intent, call))
            continue
        _wait_or_bump(chain, intent, call, what, intents, replace_after, deadline, poll)


def ensure_confirmed(chain: Chain, call: Any, what: str, is_done: Callable[[], bool], find_event: Callable[[], Any],
                     intents: IntentStore, replace_after: float = 30.0, timeout: float = 600.0) -> Any:
    """ensure_transaction, then wait until the event that did it has `chain.confirmations` on the
    canonical chain; if a reorganisation removes its block meanwhile, start over (send again).
    Returns the confirmed event."""
    deadline = time.monotonic() + timeout
    while True:
        ensure_transaction(chain, call, what, is_done, intents, replace_after, max(deadline - time.monotonic(), 1.0))
        event = find_event()
        if _confirmed(chain, event, deadline) and is_done():
            return event


def find_event(chain: Chain, contract: Any, event: str, dataset_id: bytes, seq: int) -> Any:
    """The latest `event` log of (dataset_id, seq) emitted by `contract`."""
    logs = chain.rpc(lambda: getattr(contract.events, event).get_logs(
        argument_filters={"datasetId": dataset_id, "seq": seq}, from_block=0))
    if not logs:
        raise ChainError(f"{event} for seq {seq} is in contract state but no event was found")
    return logs[-1]


def _known(chain: Chain, tx_hash: str) -> bool:
    from web3.exceptions import TransactionNotFound

    try:
        return chain.rpc(lambda: chain.w3.eth.get_transaction(HexStr(tx_hash))) is not None
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
    number, expected = int(receipt["blockNumber"]), "0x" + bytes(receipt["blockHash"]).hex()
    while True:
        head = chain.head()
        if head < number or chain.block_hash(number) != expected:
            log.warning("block %d with our transaction was reorganised away; sending again", number)
            return False
        if head - number + 1 >= chain.confirmations:
            return True
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"block {number} has {head - number + 1} of {chain.confirmations} confirmations")
        time.sleep(0.25)


def _bump(chain: Chain, intent: dict[str, Any], call: Any) -> dict[str, Any]:
    """The intent with one more attempt: the same transaction, rebuilt from `call` with the
    intent's nonce and the gas of the last signed attempt, at 25% higher fees."""
    last = _decode(intent["attempts"][-1]["raw"])
    market_fee, market_tip = _fees(chain)
    tip = max(last["maxPriorityFeePerGas"] * FEE_BUMP_NUM // FEE_BUMP_DEN + 1, market_tip)
    max_fee = max(last["maxFeePerGas"] * FEE_BUMP_NUM // FEE_BUMP_DEN + 1, market_fee, tip)
    to, data, value, chain_id, _ = _expected(chain, call)
    tx = {"to": chain.w3.to_checksum_address(to), "data": data, "value": value, "chainId": chain_id,
          "nonce": last["nonce"], "gas": last["gas"], "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip, "type": 2}
    tx_hash, raw = _sign(chain, tx)
    log.info("replacing %s with fees %d/%d", intent["attempts"][-1]["tx_hash"], max_fee, tip)
    attempts = intent["attempts"] + [{"tx_hash": tx_hash, "raw": raw, "max_fee": max_fee, "tip": tip,
                                      "sent_at": time.time()}]
    return dict(intent, attempts=attempts)


def _wait_or_bump(chain: Chain, intent: dict[str, Any], call: Any, what: str, intents: IntentStore,
                  replace_after: float, deadline: float, poll: float) -> None:
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
                if _broadcast(chain, intent["attempts"][-1]["raw"], what) == "nonce_used":
                    return
        if time.monotonic() - sent > replace_after:
            bumped = _bump(chain, intent, call)
            intents.save(bumped)
            if _broadcast(chain, bumped["attempts"][-1]["raw"], what) == "nonce_used":
                return
            intent, sent = bumped, time.monotonic()
            continue
        time.sleep(poll)
