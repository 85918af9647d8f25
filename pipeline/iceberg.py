"""The lake as Iceberg tables: one table per dataset, one snapshot per anchored batch.

Each committed and anchored batch is registered in table `anchorlake.<dataset>` with pyiceberg's
`add_files`: the table points at the batch's data parts themselves, nothing is copied or
rewritten. Its snapshot summary carries the batch's seq, Merkle root, manifest hash, anchor
transaction and chain, and tag `seq-NNNNNN` names it, so a training job can read exactly the
rows of an anchored `(dataset, seq, manifest_sha256)` with any Iceberg reader.

The table is a projection of the lake and holds nothing of its own: which batches it registers
is read back from its snapshot summaries, and `sync(..., rebuild=True)` makes it again from the
lake at any time. The catalog is SQL (SQLite by default) or REST, by configuration
(config.iceberg_catalog).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pipeline import config
from pipeline.config import S3Settings, Settings
from pipeline.core.manifest import Manifest
from pipeline.datasets import Dataset
from pipeline.errors import BadInput, CheckFailed, ConflictError, ServiceUnavailable, redact_url
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles, committed_seqs
from pipeline.lake.columnar import arrow_schema
from pipeline.lake.storage import Lake

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

log = logging.getLogger(__name__)

NAMESPACE = "anchorlake"
SEQ, ROOT, MANIFEST_SHA256, TX_HASH, CHAIN_ID = (f"anchorlake.{name}" for name in
                                                 ("seq", "root", "manifest_sha256", "tx_hash", "chain_id"))


def identifier(dataset: str) -> str:
    """The table of `dataset`: `anchorlake.<dataset>`."""
    return f"{NAMESPACE}.{dataset}"


def tag(seq: int) -> str:
    """The tag of batch `seq`'s snapshot: `seq-NNNNNN` (0-based seq, 6 digits)."""
    return f"seq-{seq:06d}"


# --- the catalog ------------------------------------------------------------------------------


def catalog(settings: Settings, uri: str | None = None, warehouse: str | None = None) -> Catalog:
    """The Iceberg catalog of the datasets' tables: `uri` (a SQLAlchemy URI or `rest:<url>`) and
    `warehouse` (where table metadata goes) when given, else as configured (config.iceberg_catalog);
    the default warehouse is `<lake>/iceberg`. Data and metadata on S3 are read and written with
    the lake's endpoint and keys (the AWS_* settings). A REST catalog takes further properties (a
    token, a credential) from pyiceberg's own configuration, PYICEBERG_CATALOG__ANCHORLAKE__*."""
    configured_uri, configured_warehouse = config.iceberg_catalog(settings.home)
    uri = uri or configured_uri
    warehouse = warehouse or configured_warehouse
    properties = _s3_properties(settings.s3)
    if uri.startswith("rest:"):
        properties |= {"type": "rest", "uri": uri.removeprefix("rest:")} | ({"warehouse": warehouse} if warehouse else {})
        return _load(properties, redact_url(uri.removeprefix("rest:")))
    _make_sqlite_folder(uri)
    properties |= {"type": "sql", "uri": uri, "warehouse": warehouse or f"{settings.lake_url.rstrip('/')}/{layout.ICEBERG}"}
    return _load(properties, _shown_sql(uri))


def _s3_properties(s3: S3Settings) -> dict[str, str]:
    """pyiceberg's FileIO properties for the lake's S3 (only those that are set)."""
    given = {"s3.endpoint": s3.endpoint_url, "s3.access-key-id": s3.access_key_id,
             "s3.secret-access-key": s3.secret_access_key, "s3.region": s3.region}
    return {name: value for name, value in given.items() if value}


def _make_sqlite_folder(uri: str) -> None:
    """Create the folder of a SQLite catalog file (the default one under ANCHORLAKE_HOME)."""
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError:
        raise BadInput(f"the Iceberg catalog {uri.split(':', 1)[0]}:… is not a SQLAlchemy URI") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)


def _shown_sql(uri: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(uri).render_as_string(hide_password=True)


def _load(properties: dict[str, str], shown: str) -> Catalog:
    """pyiceberg's catalog; a catalog that cannot be reached is ServiceUnavailable, a URI naming a
    database driver that is not installed is BadInput."""
    from pyiceberg.catalog import load_catalog
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    try:
        return load_catalog(NAMESPACE, **properties)
    except (NoSuchModuleError, ArgumentError, ModuleNotFoundError) as e:
        raise BadInput(f"the Iceberg catalog {shown} cannot be opened: {_first_line(e)}") from None
    except (OperationalError, RequestsConnectionError, Timeout) as e:
        raise ServiceUnavailable(f"the Iceberg catalog {shown} cannot be reached: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


# --- the table of a dataset ---------------------------------------------------------------------


def schema(dataset: Dataset) -> Schema:
    """The table schema: the dataset's committed columns, in order, all optional (a committed value
    may be null). Types as the data parts hold them: string, long, double, boolean, timestamptz
    (UTC, microseconds), list<string>."""
    from pyiceberg import types
    from pyiceberg.schema import Schema

    simple: dict[str, types.IcebergType] = {"string": types.StringType(), "int64": types.LongType(),
                                            "float64": types.DoubleType(), "bool": types.BooleanType(),
                                            "timestamp": types.TimestamptzType()}
    columns = dataset.committed_columns
    fields = []
    for number, column in enumerate(columns, start=1):
        kind = (types.ListType(len(columns) + number, types.StringType(), element_required=False)
                if column.type == "list<string>" else simple[column.type])
        fields.append(types.NestedField(number, column.name, kind, required=False))
    return Schema(*fields)


def _columns(table_schema: Schema) -> list[tuple[str, str]]:
    return [(f.name, str(f.field_type)) for f in table_schema.fields]


def _table(catalog: Catalog, dataset: Dataset, rebuild: bool) -> Table:
    """The dataset's table, created if missing; dropped first when `rebuild` (dropped, never
    purged: purging would delete the lake's data parts the table points at)."""
    from pyiceberg.exceptions import NoSuchTableError

    name, wanted = identifier(dataset.name), schema(dataset)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    if rebuild and catalog.table_exists(name):
        catalog.drop_table(name)
    try:  # loaded first: create_table_if_not_exists writes a metadata file before it finds the table
        table = catalog.load_table(name)
    except NoSuchTableError:
        table = catalog.create_table(name, wanted)
    if _columns(table.schema()) != _columns(wanted):
        raise CheckFailed(f"Iceberg table {name} has columns {_columns(table.schema())}, the declaration of "
                          f"{dataset.name} {_columns(wanted)}: sync with rebuild")
    return table


def registered(table: Table) -> dict[int, Snapshot]:
    """seq -> snapshot of every batch the table registers, read back from the snapshot summaries."""
    found: dict[int, Snapshot] = {}
    for snapshot in table.snapshots():
        seq = None if snapshot.summary is None else snapshot.summary.get(SEQ)
        if seq is None:
            continue
        if not str(seq).isdigit():
            raise ConflictError(f"Iceberg table {table.name()}: a snapshot names batch {seq!r}: sync with rebuild")
        if int(seq) in found:
            raise ConflictError(f"Iceberg table {table.name()} registers batch {seq} twice: sync with rebuild")
        found[int(seq)] = snapshot
    return found


# --- sync ---------------------------------------------------------------------------------------


def sync(lake: Lake, dataset: Dataset, catalog: Catalog, on_chain: Callable[[Manifest], bool],
         rebuild: bool = False) -> list[int]:
    """Register every committed and anchored batch of `dataset` that the table does not register
    yet, in seq order, each as one `add_files` snapshot tagged `seq-NNNNNN`; the seqs this call
    registered. Stops at the first committed batch that is not anchored: `on_chain(manifest)` says
    whether BatchAnchor holds it (and raises CheckFailed if it holds another manifest), so no batch
    the chain does not hold is ever registered, whatever anchor.json says. `rebuild` drops and
    recreates the table first, then registers every batch.

    Idempotent and safe to kill at any instant: what is registered is read back from the table,
    so a batch is never added twice, and a run killed between a snapshot and its tag only tags it.
    Each batch's data parts are checked against the SHA-256s its manifest pins, its anchor record
    against its manifest's hash and root, and its manifest's `previous` against the batch
    registered before it. The table points at the lake's own files, and Iceberg checks no hash
    when it reads them: a reader who must not trust the operator uses `anchorlake pull` or
    open_dataset, which verify what they read; `anchorlake audit` checks the lake itself."""
    table = _table(catalog, dataset, rebuild)
    done = registered(table)
    seqs = committed_seqs(lake, dataset.name)
    _check_registered(table, done, seqs)
    _tag_missing(table, done)
    added = []
    for seq in seqs[len(done):]:
        files = BatchFiles(lake, dataset.name, seq)
        anchor = _checked_anchor(files)
        if anchor is None or not on_chain(files.manifest()):
            log.info("%s batch %d is committed but not anchored yet: not registered, nor any after it",
                     dataset.name, seq)
            break
        previous = None if seq == 0 else _summary(done[seq - 1], MANIFEST_SHA256)
        done[seq] = _register(table, files, dataset, anchor, previous)
        added.append(seq)
    return added


def _check_registered(table: Table, done: Mapping[int, Snapshot], seqs: list[int]) -> None:
    """The table registers batches 0..k-1 of the lake's committed batches, or it is not this lake's."""
    if sorted(done) != list(range(len(done))) or len(done) > len(seqs):
        raise ConflictError(f"Iceberg table {table.name()} registers batches {sorted(done)[:10]}, the lake has "
                            f"{len(seqs)} committed: it is not a projection of this lake; sync with rebuild")


def _tag_missing(table: Table, done: Mapping[int, Snapshot]) -> None:
    """Tag each registered batch's snapshot that has no tag (a run killed after add_files)."""
    refs = table.refs()
    for seq, snapshot in sorted(done.items()):
        ref = refs.get(tag(seq))
        if ref is None:
            table.manage_snapshots().create_tag(snapshot.snapshot_id, tag(seq)).commit()
        elif ref.snapshot_id != snapshot.snapshot_id:
            raise ConflictError(f"Iceberg table {table.name()}: tag {tag(seq)} names snapshot {ref.snapshot_id}, "
                                f"batch {seq} is snapshot {snapshot.snapshot_id}; sync with rebuild")


def _summary(snapshot: Snapshot, name: str) -> str:
    return "" if snapshot.summary is None else str(snapshot.summary.get(name, ""))


def _register(table: Table, files: BatchFiles, dataset: Dataset, anchor: Mapping[str, Any],
              previous: str | None) -> Snapshot:
    """Add batch `files.seq` as one snapshot, then tag it; its snapshot. `previous`: the manifest
    hash the table registers for batch seq - 1 (None for batch 0), which the manifest must name."""
    from pyiceberg.exceptions import CommitFailedException

    manifest = files.manifest()
    if previous is not None and (manifest.data["previous"] or {}).get("manifest_sha256") != previous:
        raise CheckFailed(f"the manifest of {dataset.name} batch {files.seq} does not name manifest {previous}, "
                          f"which the table registers as batch {files.seq - 1}")
    uris = _checked_parts(files, dataset)
    properties = {SEQ: str(files.seq), ROOT: manifest.root, MANIFEST_SHA256: manifest.sha256,
                  TX_HASH: str(anchor["tx_hash"]), CHAIN_ID: str(anchor["chain_id"])}
    try:
        table.add_files(uris, snapshot_properties=properties)
    except CommitFailedException as e:
        raise ConflictError(f"Iceberg table {table.name()} changed while batch {files.seq} was added "
                            f"(another sync?): run again ({_first_line(e)})") from None
    except ValueError as e:  # pyiceberg's word for parts it will not add (already in the table, other columns)
        raise CheckFailed(f"Iceberg table {table.name()} refused the parts of batch {files.seq}: "
                          f"{_first_line(e)}") from None
    config.fault_point("iceberg.added")
    snapshot = registered(table)[files.seq]
    table.manage_snapshots().create_tag(snapshot.snapshot_id, tag(files.seq)).commit()
    log.info("%s batch %d registered: snapshot %d, tag %s", dataset.name, files.seq, snapshot.snapshot_id,
             tag(files.seq))
    return snapshot


def _checked_anchor(files: BatchFiles) -> dict[str, Any] | None:
    """The batch's live anchor record, checked against its manifest; None if it is not anchored."""
    anchor = files.anchor()
    if anchor is None:
        return None
    manifest = files.manifest()
    for field, expected in (("seq", files.seq), ("manifest_sha256", manifest.sha256), ("root", manifest.root)):
        if anchor[field] != expected:
            raise CheckFailed(f"the anchor record of {files.dataset} batch {files.seq} names {field} "
                              f"{anchor[field]}, its manifest gives {expected}")
    return anchor


def _checked_parts(files: BatchFiles, dataset: Dataset) -> list[str]:
    """The URIs of the batch's data parts, in leaf order, each read and checked against the SHA-256
    its manifest pins, and holding the dataset's committed columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest, wanted = files.manifest(), arrow_schema(dataset.committed_columns)
    declared = [(c.name, c.type) for c in dataset.committed_columns]
    committed = [(c.get("name"), c.get("type")) for c in manifest.data["schema"]["columns"]]
    if committed != declared:
        raise CheckFailed(f"{dataset.name} batch {files.seq} was committed with columns {committed}, the "
                          f"declaration has {declared}: one table takes one schema")
    uris = []
    for entry in manifest.data["files"]:
        held = pq.read_schema(pa.BufferReader(files.read(str(entry["path"]))))
        if [(f.name, f.type) for f in held] != [(f.name, f.type) for f in wanted]:
            raise CheckFailed(f"{files.uri(str(entry['path']))} holds columns {held.names} of types "
                              f"{[str(f.type) for f in held]}, not the dataset's committed columns")
        uris.append(files.uri(str(entry["path"])))
    return uris
