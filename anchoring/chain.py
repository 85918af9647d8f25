"""The chain connection (SPEC §8): JSON-RPC over web3.py, the signing account, error mapping,
and contract deployment. The `anchoring` package knows the chain and nothing else: it takes
values and callbacks from the pipeline and returns typed results; it never touches the lake.

Private keys never appear in logs or error messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import BadInput, ChainError, ConflictError, ServiceUnavailable, redact_url, scrub

log = logging.getLogger(__name__)

TOKEN_SUPPLY = 10**9 * 10**18
CONTRACTS = ("RewardToken", "BatchAnchor", "RewardDistributor")  # in deployment order


def _artifacts() -> dict[str, Any]:
    from anchoring.compile import build

    return build()


class Chain:
    """A JSON-RPC connection and, optionally, the signing account."""

    def __init__(self, rpc_url: str, key: str | None = None, confirmations: int = 1,
                 timeout: float = 120.0, role: str = "signing") -> None:
        from urllib.parse import urlsplit

        from web3 import Web3

        try:
            parts = urlsplit(rpc_url)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError:
            raise BadInput("the chain RPC URL is malformed") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise BadInput(f"the chain RPC URL must be http:// or https://, got {redact_url(rpc_url)!r}")
        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.confirmations = confirmations
        self.timeout = timeout
        self.account = None
        self.role = role
        if key is not None:
            from eth_account import Account

            try:
                self.account = Account.from_key(key)
            except Exception:
                raise BadInput(f"the {role} key is not a valid private key") from None
        self.chain_id = self.rpc(lambda: self.w3.eth.chain_id)

    def rpc(self, call: Callable[[], Any]) -> Any:
        """Run one RPC call; an unreachable or timed-out node, or one that does not answer
        JSON-RPC, is ServiceUnavailable (retryable). No message carries the URL's secret parts."""
        import requests
        from web3.exceptions import BadFunctionCallOutput, BadResponseFormat, ContractLogicError, Web3RPCError

        try:
            return call()
        except BadFunctionCallOutput:  # no code at the address: not the contract it was taken for
            raise BadInput("a contract call got no answer: no contract of the expected kind is at that address "
                           "on this chain (check the address and the chain)") from None
        except ContractLogicError as e:
            if getattr(e, "data", None) in (None, "0x", "") and "execution reverted" in str(e):  # an unknown function
                raise BadInput("a contract call reverted without a reason: the address holds another kind of contract "
                               "(check the address)") from None
            raise
        except Web3RPCError as e:  # the node's own error: callers read it; its text may quote the URL
            e.args = tuple(scrub(str(a), self.rpc_url) for a in e.args)
            if isinstance(getattr(e, "message", None), str):
                e.message = scrub(e.message, self.rpc_url)
            raise
        except (BadResponseFormat, ValueError) as e:
            if "decode" not in str(e).lower() and not isinstance(e, BadResponseFormat):
                raise
            raise ServiceUnavailable(f"chain RPC at {redact_url(self.rpc_url)} did not answer JSON-RPC") from None
        except requests.exceptions.ConnectionError:
            raise ServiceUnavailable(f"chain RPC at {redact_url(self.rpc_url)} cannot be reached") from None
        except requests.exceptions.Timeout:
            raise ServiceUnavailable(f"chain RPC at {redact_url(self.rpc_url)} timed out") from None
        except requests.exceptions.RequestException as e:  # e.g. 401/429 from a provider; its text holds the URL
            status = getattr(getattr(e, "response", None), "status_code", "?")
            raise ServiceUnavailable(f"chain RPC at {redact_url(self.rpc_url)} answered HTTP {status}") from None

    @property
    def address(self) -> Any:
        """The signing account's checksum address."""
        if self.account is None:
            raise BadInput(f"no {self.role} key is configured (ANCHORLAKE_{self.role.upper()}_KEY)")
        return self.account.address

    def contract(self, name: str, address: str) -> Any:
        return self.w3.eth.contract(address=self.w3.to_checksum_address(address), abi=_artifacts()[name]["abi"])

    def has_code(self, address: str) -> bool:
        code = self.rpc(lambda: self.w3.eth.get_code(self.w3.to_checksum_address(address)))
        return len(code) > 0

    def runs_genuine(self, name: str, address: str) -> bool:
        """Whether `address` runs exactly the compiled `name` (its immutables, set at deployment, aside)."""
        artifact = _artifacts()[name]
        expected = bytes.fromhex(artifact["deployedBytecode"][2:])
        code = bytes(self.rpc(lambda: self.w3.eth.get_code(self.w3.to_checksum_address(address))))
        if len(code) != len(expected):
            return False
        masked_code, masked_expected = bytearray(code), bytearray(expected)
        for start, length in artifact.get("immutables", []):
            masked_code[start:start + length] = masked_expected[start:start + length] = bytes(length)
        return masked_code == masked_expected

    def has_role(self, name: str, address: str, role: str, account: str) -> bool:
        contract = self.contract(name, address)
        role_id = self.rpc(lambda: getattr(contract.functions, role)().call())
        return bool(self.rpc(lambda: contract.functions.hasRole(role_id, self.w3.to_checksum_address(account)).call()))

    def head(self) -> int:
        return int(self.rpc(lambda: self.w3.eth.block_number))

    def block_hash(self, number: int) -> str | None:
        """Hash of the canonical block at `number`, or None if the chain is not that long."""
        from web3.exceptions import BlockNotFound

        try:
            block = self.rpc(lambda: self.w3.eth.get_block(number))
        except BlockNotFound:
            return None
        return "0x" + bytes(block["hash"]).hex() if block else None

    def revert_reason(self, error: Exception) -> str:
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

    def _refused(self, error: Exception, what: str, sender: str) -> ChainError:
        message = str(getattr(error, "message", error))
        if "insufficient funds" in message:
            return ChainError(f"{what}: account {sender} has no funds to pay gas")
        return ChainError(f"{what} refused by the node: {message}")

    def transact(self, name: str, call: Any, what: str) -> Any:
        """Sign and send a contract call; wait for its receipt and confirmations (not resumable:
        for deployments and claims; batch transactions go through anchoring.transactions)."""
        from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError

        sender = self.address
        try:
            nonce = self.rpc(lambda: self.w3.eth.get_transaction_count(sender, "pending"))
            tx = self.rpc(lambda: call.build_transaction({"from": sender, "nonce": nonce, "chainId": self.chain_id}))
            signed = self.account.sign_transaction(tx)  # type: ignore[union-attr]
            tx_hash = self.rpc(lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction))
        except ContractLogicError as e:
            raise ChainError(f"{what} would revert: {self.revert_reason(e)}") from None
        except Web3RPCError as e:
            raise self._refused(e, what, sender) from None
        try:
            receipt = self.rpc(lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout))
        except TimeExhausted:
            raise ServiceUnavailable(f"{what}: transaction {tx_hash.hex()} not mined within {self.timeout:.0f}s") from None
        if receipt["status"] != 1:
            raise ChainError(f"{what}: transaction {tx_hash.hex()} reverted")
        self.wait_confirmations(receipt["blockNumber"])
        return receipt

    def wait_confirmations(self, block_number: int) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            confirmations = self.head() - block_number + 1
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


def created_by(chain: Chain, address: str, deployer: str) -> bool:
    """Whether `deployer` created the contract at `address` (CREATE with one of its nonces so far)."""
    from web3.utils.address import get_create_address

    sender = chain.w3.to_checksum_address(deployer)
    nonces = int(chain.rpc(lambda: chain.w3.eth.get_transaction_count(sender)))
    wanted = address.lower()
    return any(str(get_create_address(sender, nonce)).lower() == wanted for nonce in range(nonces))  # type: ignore[arg-type]


def check_deployment(chain: Chain, deployment: Mapping[str, str], names: tuple[str, ...],
                     trusted: Mapping[str, str] | None = None, deployer: str | None = None,
                     signer_roles: bool = True) -> None:
    """Refuse a deployment record (which whoever writes the lake can change) before anything is
    signed against it or read from it: each named contract must run the compiled code, give the
    signing key its role, and (unless configuration names it: `trusted`) have been created by
    `deployer` (the admin account), since anyone can deploy the same code; the distributor must
    pay in the record's token. `signer_roles=False` skips the role of the signing key (for `up`,
    which only reads the record). Raises ConflictError naming what differs."""
    roles = {"BatchAnchor": "ANCHORER_ROLE", "RewardDistributor": "DISTRIBUTOR_ROLE"}
    configured = {k: v.lower() for k, v in (trusted or {}).items()}
    for name in names:
        address = deployment.get(name)
        if not address or not chain.runs_genuine(name, address):
            raise ConflictError(f"the deployment record names {name} at {address}, which does not run anchorlake's "
                                f"{name}; nothing was signed (check the record and the configuration)")
        if signer_roles and name in roles and not chain.has_role(name, address, roles[name], chain.address):
            raise ConflictError(f"{name} at {address} does not give {roles[name]} to the configured key "
                                f"{chain.address}; nothing was signed")
        if configured.get(name) == address.lower():
            continue
        if deployer is None:
            raise ConflictError(f"cannot tell who deployed {name} at {address}: set ANCHORLAKE_ADMIN_ADDRESS (the "
                                "account that deployed the contracts) or name the contracts in the configuration; "
                                "nothing was signed")
        if not created_by(chain, address, deployer):
            raise ConflictError(f"the deployment record names {name} at {address}, which {deployer} did not deploy; "
                                "nothing was signed (check the record; set ANCHORLAKE_ADMIN_ADDRESS to the account "
                                "that deployed the contracts, or name them in the configuration)")
    if "RewardDistributor" in names:
        paid_in = chain.rpc(lambda: chain.contract("RewardDistributor", deployment["RewardDistributor"])
                            .functions.token().call())
        if str(paid_in).lower() != str(deployment.get("RewardToken", "")).lower():
            raise ConflictError(f"RewardDistributor at {deployment['RewardDistributor']} pays in {str(paid_in).lower()}, "
                                f"the deployment record names RewardToken {deployment.get('RewardToken')}; "
                                "nothing was signed")


def ensure_deployment(admin: Chain, known: Mapping[str, str], save: Callable[[dict[str, str]], None],
                      roles: Mapping[str, str], token: str | None = None) -> dict[str, str]:
    """Deploy, with the admin key, whichever of the contracts `known` (name -> address) lacks;
    return them all. `roles` names the accounts of the anchorer, the distributor and the treasury:
    the admin grants the first two their roles, the token is minted to the treasury, and the
    distributor pulls rewards from it.

    `save` is called after each deployment with every address known so far. Contracts in
    `known` must have code on the chain: a devnet that lost its state is reported, not silently
    redeployed over. `token` names an existing ERC-20 to pay rewards in."""
    deployment = {name: known[name] for name in CONTRACTS if known.get(name)}
    for name, address in deployment.items():
        if not admin.has_code(address):
            raise ConflictError(
                f"the deployment record of chain {admin.chain_id} names {name} at {address}, but the chain has "
                "no code there (was the devnet reset? `anchorlake down --purge` starts the embedded default afresh)")
    if token and not deployment.get("RewardToken"):
        deployment["RewardToken"] = token.lower()
    if all(deployment.get(name) for name in CONTRACTS):
        return deployment
    me = admin.address
    account = {role: admin.w3.to_checksum_address(roles[role]) for role in ("anchorer", "distributor", "treasury")}
    arguments: dict[str, Callable[[], tuple[Any, ...]]] = {
        "RewardToken": lambda: (account["treasury"], TOKEN_SUPPLY),
        "BatchAnchor": lambda: (me, account["anchorer"]),
        "RewardDistributor": lambda: (me, account["distributor"], admin.w3.to_checksum_address(deployment["RewardToken"]),
                                      account["treasury"]),
    }
    for name in CONTRACTS:
        if deployment.get(name):
            continue
        deployment[name] = admin.deploy(name, *arguments[name]())
        log.info("deployed %s at %s on chain %d", name, deployment[name], admin.chain_id)
        save(dict(deployment))
    return deployment
