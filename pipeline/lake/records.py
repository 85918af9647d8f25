"""Tagged records in the lake: read through their validating reader, written once where they
are write-once, and the contract deployments of each chain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core import records
from pipeline.core.records import RecordKind
from pipeline.errors import AlreadyExists, ConflictError, NotFound
from pipeline.lake import layout
from pipeline.lake.storage import Lake


def read_record(lake: Lake, key: str, kind: RecordKind) -> dict[str, Any] | None:
    """The record at `key`, validated as `kind`; None if there is none."""
    try:
        raw = lake.read(key)
    except NotFound:
        return None
    return kind.load(raw, lake.uri(key))


def create_once(lake: Lake, key: str, kind: RecordKind, record: Mapping[str, Any]) -> None:
    """Create a write-once record; an existing one with the same values is fine, another is a conflict."""
    try:
        lake.create(key, kind.dump(record))
    except AlreadyExists:
        existing = kind.load(lake.read(key), lake.uri(key))
        for field in ("root", "manifest_sha256", "tx_hash", "seq"):
            if field in record and existing.get(field) != record.get(field):
                raise ConflictError(f"{lake.uri(key)} exists with {field} {existing.get(field)}, "
                                    f"not {record.get(field)}") from None


def load_deployment(lake: Lake, chain_id: int) -> dict[str, Any] | None:
    """`deployments/<chain_id>.json`, validated; None if there is none."""
    key = layout.deployment(chain_id)
    data = read_record(lake, key, records.DEPLOYMENT)
    if data is not None and data["chain_id"] != chain_id:
        raise ConflictError(f"{lake.uri(key)} is for chain {data['chain_id']}, the RPC serves chain {chain_id}")
    return data


def save_deployment(lake: Lake, deployment: Mapping[str, Any]) -> None:
    lake.write(layout.deployment(int(deployment["chain_id"])), records.DEPLOYMENT.dump(deployment))


def deployment_for(lake: Lake, chain_id: int, overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The contracts to use on `chain_id`: the lake's deployment record, overridden by configuration.

    Raises NotFound when no BatchAnchor is known."""
    deployment = dict(load_deployment(lake, chain_id) or {})
    deployment.update({k: v.lower() for k, v in (overrides or {}).items()})
    if not deployment.get("BatchAnchor"):
        raise NotFound(f"no contracts are deployed on chain {chain_id}: run `anchorlake up` first")
    return deployment
