"""The stages of a batch, as the DAG and the CLI both run them.

stage -> commit -> anchor -> publish_rewards -> publish_receipts. Each takes explicit
arguments, is idempotent, and can be killed at any instant and run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config, datasets, devnet
from pipeline.config import Settings
from pipeline.core import seal
from pipeline.core.records import DEPLOYMENT
from pipeline.datasets import Dataset
from pipeline.errors import BadInput, CheckFailed, ConflictError, NotFound, ServiceUnavailable
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake import records as lake_records
from pipeline.lake import sources
from pipeline.lake.batch import BatchFiles, committed_seqs
from pipeline.lake.storage import Lake, open_lake
from pipeline.progress import Meter, silent
from pipeline.receipts import build_receipts

log = logging.getLogger(__name__)

REANCHOR_WINDOW = 16  # how many recent batches each run re-checks for reorganised-away anchors


def lake_for(settings: Settings) -> Lake:
    return open_lake(settings.lake_url, settings.s3)


def dataset_for(settings: Settings, name: str) -> Dataset:
    return datasets.load(settings.datasets_dir, name)


def chain_for(settings: Settings, role: str | None = None) -> Any:
    """The configured chain, signing with the key of `role` (admin, anchorer, distributor or
    treasury) when one is named, read-only otherwise."""
    from anchoring.chain import Chain

    if not settings.rpc_url:
        raise ServiceUnavailable("no chain is configured: run `anchorlake up` or set ANCHORLAKE_RPC_URL")
    key = settings.key(role) if role else None
    return Chain(settings.rpc_url, key, settings.confirmations, role=role or "signing")


def deployment_for(settings: Settings, chain: Any, checked: tuple[str, ...] = (),
                   signer_roles: bool = True) -> dict[str, Any]:
    """The contracts on `chain`: the lake's deployment record, overridden by configuration. The
    `checked` ones are checked on chain (code, deployed by the admin account and, with
    `signer_roles`, the signing key's role) before the caller signs anything for them or trusts them."""
    from anchoring.chain import check_deployment

    deployment = lake_records.deployment_for(lake_for(settings), chain.chain_id, settings.contracts)
    if checked:
        check_deployment(chain, deployment, checked, settings.contracts, settings.address("admin"), signer_roles)
    return deployment


def bring_up(progress: Callable[[str], None]) -> tuple[Settings, dict[str, Any], bool]:
    """Start the embedded devnet unless ANCHORLAKE_RPC_URL names a chain; deploy what is missing.

    Returns (settings, deployment, whether a devnet was started now); a devnet started now is
    stopped again if deployment fails."""
    from anchoring.chain import CONTRACTS, check_deployment, ensure_deployment

    started = False
    home = config.load().home
    if not config.rpc_url_is_external():
        url, started = devnet.devnet_up(home)
        progress(("started" if started else "reusing") + f" the local devnet at {url}")
    try:
        settings = config.load()  # now with the devnet's URL
        lake = lake_for(settings)
        chain = chain_for(settings)
        known = lake_records.load_deployment(lake, chain.chain_id) or {}
        recorded = tuple(name for name in CONTRACTS if known.get(name) and chain.has_code(known[name])
                         and not (name == "RewardToken" and settings.contracts.get(name)))  # any ERC-20 may pay
        check_deployment(chain, known, recorded, settings.contracts, settings.address("admin"), signer_roles=False)
        roles: dict[str, str] = {}
        if any(not known.get(name) for name in CONTRACTS):  # only deploying needs the admin key
            chain, roles = chain_for(settings, "admin"), _role_accounts(settings)
        addresses = ensure_deployment(chain, known, lambda d: lake_records.save_deployment(
            lake, {"chain_id": chain.chain_id, **d}), roles, settings.contracts.get("RewardToken"))
    except BaseException:
        if started:  # leave no process behind on failure
            devnet.devnet_down(home)
        raise
    return settings, {"format": DEPLOYMENT.format, "chain_id": chain.chain_id, **addresses}, started


def _role_accounts(settings: Settings) -> dict[str, str]:
    """The accounts a deployment grants roles to (from the role's key or ANCHORLAKE_<ROLE>_ADDRESS)."""
    accounts = {role: settings.address(role) for role in ("anchorer", "distributor", "treasury")}
    missing = [role for role, address in accounts.items() if address is None]
    if missing:
        raise BadInput("deploying needs the account of each role: set " + ", ".join(
            f"{config.key_variable(r)} or {config.address_variable(r)}" for r in missing))
    return {role: str(address) for role, address in accounts.items()}


def contribute(settings: Settings, dataset: str, paths: Sequence[Path], sign: bool = False) -> list[dict[str, Any]]:
    """Drop contribution files into the dataset's drop zone; (key, sha256, bytes) of each. With
    `sign`, each is signed with the contributor key first (SPEC §13.7): `FILE.sig.json` is written
    beside the file and dropped before it."""
    from pipeline.core.signature import CONTRIBUTION, SIDECAR_SUFFIX, sign_file

    dataset_for(settings, dataset)
    for path in paths:
        if not path.is_file():
            raise NotFound(f"{path}: no such file")
    key_text = settings.contributor() if sign else ""
    lake = lake_for(settings)
    dropped = []
    for path in paths:
        data = path.read_bytes()
        sidecar, record = None, {}
        if sign:
            record = sign_file(key_text, dataset, data)
            sidecar = CONTRIBUTION.dump(record)
            path.with_name(path.name + SIDECAR_SUFFIX).write_bytes(sidecar)
        key, digest = sources.contribute(lake, dataset, path.name, data, sidecar)
        dropped.append({"key": key, "uri": lake.uri(key), "sha256": digest, "bytes": len(data)}
                       | ({"signer": record["signer"]} if sign else {}))
    return dropped


def check(settings: Settings, dataset: str) -> list[str]:
    """Everything wrong with a dataset's declaration and suite, found without data, one line each."""
    from pipeline.errors import FormatError
    from pipeline.ingest.quality import suite_problems

    try:
        return suite_problems(dataset_for(settings, dataset))
    except FormatError as e:  # the declaration, or the suite file itself
        return [str(e)]


def stage(settings: Settings, dataset: str) -> int | None:
    """Freeze the next batch's sources; its seq, or None when nothing new arrived. A declaration
    or suite with a problem stops it before anything is staged."""
    problems = check(settings, dataset)
    if problems:
        more = f" (and {len(problems) - 1} more: run `anchorlake check`)" if len(problems) > 1 else ""
        raise BadInput(problems[0] + more)
    return stage_sources(lake_for(settings), dataset_for(settings, dataset))


def commit(settings: Settings, dataset: str, seq: int, tick: Callable[[int], None] = lambda _: None) -> dict[str, Any]:
    """Commit staged batch `seq`, sealed. Batch seq - 1, whose rewards ledger and manifest the new
    batch builds on, must carry this pipeline's seal: a lake writer who rewrote it (say, moving a
    contributor's cumulative amount to another) is refused before anything is built."""
    key = settings.seal_key()
    lake = lake_for(settings)
    if seq > 0:
        previous = BatchFiles(lake, dataset, seq - 1)
        if previous.committed() and not _seal_holds(settings, previous):
            raise ConflictError(f"the manifest of {dataset} batch {seq - 1} ({previous.manifest().sha256}) carries no "
                                f"valid seal of this pipeline's commit; batch {seq} is not built on it")
    m = commit_batch(lake, dataset_for(settings, dataset), seq, lease_ttl=settings.lease_seconds,
                     seal=lambda digest: seal.mac(key, dataset, seq, digest), tick=tick)
    return {"seq": m.seq, "root": m.root, "counts": m.data["counts"], "manifest_sha256": m.sha256}


def _sealed(settings: Settings, files: BatchFiles, spec: Dataset) -> Any:
    """The batch's manifest, if this pipeline committed it (its seal holds) and it pays what the
    dataset declares; ConflictError before anything is signed otherwise."""
    m = files.manifest()
    if not _seal_holds(settings, files):
        raise ConflictError(f"the manifest of {files.dataset} batch {files.seq} ({m.sha256}) carries no valid seal of "
                            "this pipeline's commit: it was not written by anchorlake's commit; nothing was signed")
    declared = spec.rewards.terms()
    recorded = {k: m.rewards.get(k) for k in declared}
    over_pool = spec.rewards.rule == "proportional/1" and int(m.rewards["total"]) > spec.rewards.pool
    if recorded != declared or over_pool:
        raise ConflictError(f"the manifest of {files.dataset} batch {files.seq} pays {m.rewards.get('total')} under "
                            f"{recorded}; the dataset declares {declared}; nothing was signed")
    return m


def _seal_holds(settings: Settings, files: BatchFiles) -> bool:
    """Whether the batch's manifest carries a valid seal of this pipeline's commit (core.seal)."""
    given = files.seal()
    return given is not None and seal.holds(settings.seal_key(), files.dataset, files.seq, files.manifest().sha256, given)


@dataclass(frozen=True)
class _Settle:
    """One kind of chain record a batch needs: how to read it, make it and check it still holds."""

    what: str
    current: Callable[[BatchFiles], dict[str, Any] | None]
    make: Callable[[BatchFiles], dict[str, Any]]
    holds: Callable[[BatchFiles, dict[str, Any]], bool]
    record: Callable[[BatchFiles, dict[str, Any], bool], None]  # (files, record, again)
    needed: Callable[[BatchFiles], bool] = lambda _: True  # False: the batch has nothing to put on chain


def _settle(lake: Lake, dataset: str, seq: int, kind: _Settle) -> dict[str, Any]:
    """Bring every committed batch up to `seq`, in order, to having `kind` on chain; make it again
    for a recent batch whose record a reorganisation removed from the chain. The record of `seq`."""
    record: dict[str, Any] = {}
    for s in range(seq + 1):
        files = BatchFiles(lake, dataset, s)
        if not kind.needed(files):
            continue
        existing = kind.current(files)
        if existing is None:
            record = kind.make(files)
            kind.record(files, record, False)
            log.info("%s %s batch %d in %s", kind.what, dataset, s, record["tx_hash"])
        elif s > seq - REANCHOR_WINDOW and not kind.holds(files, existing):
            log.warning("%s batch %d: %s %s was reorganised away; again", dataset, s, kind.what, existing["tx_hash"])
            record = kind.make(files)
            kind.record(files, record, True)
        else:
            record = existing
    return record


def anchor(settings: Settings, dataset: str, seq: int) -> dict[str, Any]:
    """Anchor every committed batch up to `seq` that is not anchored yet, in seq order, and
    re-anchor a recent batch whose recorded anchor a reorganisation removed from the chain."""
    from anchoring.batch_anchor import anchor_batch, holds_anchor

    spec = dataset_for(settings, dataset)
    chain = chain_for(settings, "anchorer")
    address = deployment_for(settings, chain, ("BatchAnchor",))["BatchAnchor"]

    def make(files: BatchFiles) -> dict[str, Any]:
        m = _sealed(settings, files, spec)
        return asdict(anchor_batch(chain, address, spec.dataset_id, files.seq, bytes.fromhex(m.root), m.tree_size,
                                   bytes.fromhex(m.sha256), files.intents("anchor"), settings.replace_after,
                                   settings.chain_timeout))

    def holds(files: BatchFiles, r: dict[str, Any]) -> bool:  # against our BatchAnchor, never the record's
        return r["contract"].lower() == address.lower() and holds_anchor(
            chain, address, spec.dataset_id, r["seq"], r["root"], r["manifest_sha256"], r["block_number"],
            r["block_hash"])

    return _settle(lake_for(settings), dataset, seq, _Settle(
        "anchored", BatchFiles.anchor, make, holds, BatchFiles.record_anchor))


def publish_rewards(settings: Settings, dataset: str, seq: int) -> dict[str, Any]:
    """Publish the rewards root of every committed batch up to `seq` that pays (SPEC §13.8: a
    batch with no accepted row publishes nothing), in order: funded with the token, or (payout
    "points") the ledger root alone. A recent publication a reorganisation removed is published
    again (recorded under state/, as rewards-published.json is write-once)."""
    from anchoring.distributor import publish_rewards as publish
    from anchoring.distributor import published_root

    spec = dataset_for(settings, dataset)
    chain = chain_for(settings, "distributor")
    deployment = deployment_for(settings, chain, ("RewardDistributor",))
    treasury = chain_for(settings, "treasury") if "treasury" in settings.keys else None

    def make(files: BatchFiles) -> dict[str, Any]:
        rewards = _sealed(settings, files, spec).rewards
        return asdict(publish(chain, deployment, spec.dataset_id, files.seq, bytes.fromhex(rewards["root"]),
                              int(rewards["cumulative_total"]), lambda step: files.intents(f"rewards-{step}"),
                              settings.replace_after, settings.chain_timeout, points=spec.rewards.payout == "points",
                              treasury=treasury, max_increase=int(rewards["total"])))

    def holds(files: BatchFiles, r: dict[str, Any]) -> bool:  # against our distributor, never the record's
        if r["contract"].lower() != deployment["RewardDistributor"].lower():
            return False
        onchain = published_root(chain, deployment["RewardDistributor"], spec.dataset_id, files.seq)
        return onchain is not None and onchain.hex() == r["root"]

    return _settle(lake_for(settings), dataset, seq, _Settle(
        "published rewards of", BatchFiles.rewards_publication, make, holds, BatchFiles.record_rewards_publication,
        BatchFiles.pays))


def publish_receipts(settings: Settings, dataset: str, seq: int) -> int:
    """Write every contributor's receipt for batch `seq`; the index is written last. Only for a
    batch this pipeline committed: receipts are built on its manifest, which the lake holds."""
    files = BatchFiles(lake_for(settings), dataset, seq)
    if not _seal_holds(settings, files):
        raise CheckFailed(f"the manifest of {dataset} batch {seq} ({files.manifest().sha256}) carries no valid seal of "
                          "this pipeline's commit: no receipts are written for it")
    return build_receipts(files, dataset_for(settings, dataset))


def register_table(settings: Settings, dataset: str, rebuild: bool = False) -> list[int]:
    """Register every batch anchored on chain that the dataset's Iceberg table lacks (the table is
    a projection of the lake: `rebuild` makes it again from the lake); the seqs added."""
    from pipeline import iceberg

    spec = dataset_for(settings, dataset)
    return iceberg.sync(lake_for(settings), spec, iceberg.catalog(settings), anchored_on_chain(settings, spec), rebuild)


def anchored_on_chain(settings: Settings, spec: Dataset) -> Callable[[Any], bool]:
    """`on_chain(manifest)`: whether BatchAnchor (the deployment, checked on chain) holds the
    batch, asked of the chain and never of the lake; CheckFailed if it holds another manifest."""
    from anchoring.batch_anchor import read_batch

    chain = chain_for(settings)
    address = deployment_for(settings, chain, ("BatchAnchor",), signer_roles=False)["BatchAnchor"]

    def on_chain(m: Any) -> bool:
        held = read_batch(chain, address, spec.dataset_id, m.seq)
        if held.exists and (held.root.hex(), held.tree_size, held.manifest_hash.hex()) != (m.root, m.tree_size, m.sha256):
            raise CheckFailed(f"{spec.name} batch {m.seq}: BatchAnchor {address} holds another manifest "
                              f"({held.manifest_hash.hex()}) than the lake's ({m.sha256})")
        return bool(held.exists)

    return on_chain


def batch_summary(settings: Settings, dataset: str) -> dict[str, Any]:
    """The latest batch of `dataset` at a glance: manifest, current anchor, number of contributors
    in the rewards ledger, and the receipt of its first contributor."""
    lake = lake_for(settings)
    seqs = committed_seqs(lake, dataset)
    if not seqs:
        raise NotFound(f"{dataset} has no batches yet")
    files = BatchFiles(lake, dataset, seqs[-1])
    contributor = files.receipt_contributors()[0]
    return {"seq": files.seq, "manifest": files.manifest(), "anchor": files.anchor(), "contributor": contributor,
            "receipt": files.receipt(contributor).data, "rewarded": len(files.rewards_tree().values)}


def batch_finished(files: BatchFiles) -> bool:
    """Anchored, rewards published, and receipts written naming the batch's current anchor."""
    anchor = files.anchor()
    return (anchor is not None and (files.rewards_publication() is not None or not files.pays())
            and files.receipts_anchor() == anchor["block_hash"])


@dataclass
class RunReport:
    dataset: str
    committed: list[dict[str, Any]] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage, summed over batches
    unfinished: list[str] = field(default_factory=list)  # batches whose receipts could not be written, and why

    @contextmanager
    def timed(self, stage_name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage_name] = round(self.seconds.get(stage_name, 0.0) + time.perf_counter() - start, 3)


def settle(settings: Settings, dataset: str, seq: int, progress: Callable[[str], None], report: RunReport) -> None:
    """Anchor and publish the rewards of every batch up to `seq` that lacks them (re-checking
    recent ones against reorganisations), then write the receipts that are missing or name an
    anchor that is no longer the batch's current one."""
    progress(f"{dataset}: anchoring batches up to {seq}")
    with report.timed("anchor"):
        anchor(settings, dataset, seq)
    progress(f"{dataset}: publishing rewards up to batch {seq}")
    with report.timed("rewards"):
        publish_rewards(settings, dataset, seq)
    lake = lake_for(settings)
    for s in range(seq + 1):
        if not batch_finished(BatchFiles(lake, dataset, s)):
            progress(f"{dataset}: writing receipts of batch {s}")
            with report.timed("receipts"):
                try:
                    publish_receipts(settings, dataset, s)
                except CheckFailed as e:  # the batch's files differ from its manifest: later batches go on
                    log.error("%s batch %d: receipts not written: %s", dataset, s, e)
                    report.unfinished.append(f"{dataset} batch {s}: receipts not written: {e}")
    progress(f"{dataset}: registering anchored batches in the Iceberg table")
    with report.timed("table"):
        try:
            register_table(settings, dataset)
        except Exception as e:  # noqa: BLE001  a projection: whatever breaks it (its metadata is in the lake,
            # which anyone with the admin identity can write), the batches stand and the dataset goes on
            log.error("%s: Iceberg table not updated: %s: %s", dataset, type(e).__name__, e)
            report.unfinished.append(f"{dataset}: Iceberg table not updated ({type(e).__name__}: {e}); "
                                     "`anchorlake table --dataset {dataset} --rebuild` makes it again")


def run(settings: Settings, dataset: str, progress: Callable[[str], None] = lambda _: None,
        meter: Meter = silent) -> RunReport:
    """One batch now, every stage: finish what an earlier run left, then commit what is new.
    `progress` gets a line as each stage starts; `meter` shows the progress of long stages."""
    dataset_for(settings, dataset)  # an unknown or broken declaration stops the run before anything
    lake = lake_for(settings)
    report = RunReport(dataset)
    committed = committed_seqs(lake, dataset)
    if committed:
        report.finished = [s for s in committed if not batch_finished(BatchFiles(lake, dataset, s))]
        settle(settings, dataset, committed[-1], progress, report)
    progress(f"{dataset}: staging new sources")
    with report.timed("stage"):
        staged = stage(settings, dataset)
    if staged is None:
        progress(f"{dataset}: no new sources")
        return report
    progress(f"{dataset}: validating and committing batch {staged}")
    with report.timed("commit"), meter(f"{dataset}: committing batch {staged}", "records") as tick:
        report.committed.append(commit(settings, dataset, staged, tick))
    settle(settings, dataset, staged, progress, report)
    report.finished.append(staged)
    return report
