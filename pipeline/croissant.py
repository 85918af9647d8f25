"""Croissant 1.1 metadata (JSON-LD) of a dataset as of its committed batches. Pure: no I/O.

The document names every data file of the given batches (a FileObject each, with the SHA-256 and
size its manifest pins), reads them all as one record set `rows` through a FileSet, and carries
the declaration's licence and RAI fields, one record per batch of what was anchored (manifest
SHA-256, Merkle root, rows, contributors), and how to cite it: `(dataset, seq, manifest_sha256)`
of the last batch, which names every batch before it through the manifest chain (SPEC §13.9).

mlcroissant (the reference reader) resolves a relative `contentUrl` against the folder of the
JSON-LD file, and reads a FileSet without `containedIn` by matching its `includes` against the
files *under* that folder, in path order. So `rows` reads back only when every data file lies
under the document's folder; FileObjects also resolve from elsewhere (`../000000/…`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any

from pipeline.core.manifest import Manifest
from pipeline.datasets import Column, Dataset
from pipeline.errors import BadInput

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
PARQUET = "application/x-parquet"
ROWS = "rows"  # the record set of the data
BATCHES = "batches"  # the record set of the batches: one embedded record each
FILE_SET = "data-files"

# Croissant 1.1's JSON-LD context (spec appendix 1) with the terms mlcroissant adds. schema.org
# is spelled https, as mlcroissant reads it: with http it finds no schema.org/Dataset.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "annotation": "cr:annotation",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "excludes": "cr:excludes",
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "readLines": "cr:readLines",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sdVersion": "cr:sdVersion",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
    "unArchive": "cr:unArchive",
    "value": "cr:value",
}
DATA_TYPES = {"string": "sc:Text", "int64": "sc:Integer", "float64": "sc:Float", "bool": "sc:Boolean",
              "timestamp": "sc:DateTime", "list<string>": "sc:Text"}
CONTRIBUTOR = ("EVM address (lowercase 0x + 40 hex characters) of the contributor of this row: every row "
               "carries its contributor, the attribution its Merkle leaf commits to.")
SALT = ("32 lowercase hex characters from a CSPRNG, fresh for each row and part of its Merkle leaf: a short row "
        "cannot be guessed from its leaf hash, and a row can be taken down without breaking other rows' proofs.")


def document(dataset: Dataset, manifests: Sequence[Manifest], content_url: Callable[[int, str], str], *,
             contributors: Mapping[int, int] | None = None) -> dict[str, Any]:
    """The Croissant 1.1 JSON-LD of `dataset` as of `manifests`.

    Requires `manifests` non-empty, committed manifests of `dataset`, in strictly increasing seq.
    `content_url(seq, path)` is the URL of the data file `path` (as the manifest names it) of
    batch `seq`, relative to the document's folder or absolute; mlcroissant reads the FileSet's
    files in path order, so the URLs should sort in leaf order (zero-padded seq and part numbers do).
    `contributors` maps seq to the number of distinct contributors of that batch (the rows of its
    rewards ledger), where known. Raises BadInput on manifests that do not fit."""
    _check(dataset, manifests)
    last = manifests[-1]
    files = list(_file_objects(manifests, content_url))
    rai = {f"rai:{key}": value for key, value in dataset.rai}
    license_ = {"license": _license_url(dataset.license)} if dataset.license else {}
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": dataset.name,
        "description": _description(dataset, manifests),
        **license_,
        "version": f"1.{last.seq}.0",  # batches only append rows: a minor version in Croissant's rules
        "datePublished": last.data["created_at"],
        "creator": {"@type": "sc:Organization", "name": f"The contributors to {dataset.name}",
                    "description": "Each row's contributor column names the EVM address of the person who wrote it."},
        "citeAs": _cite_as(dataset, manifests),
        **rai,
        "distribution": [*files, _file_set([f["contentUrl"] for f in files])],
        "recordSet": [_rows(dataset), _batches(manifests, contributors or {})],
    }


def _check(dataset: Dataset, manifests: Sequence[Manifest]) -> None:
    """BadInput unless `manifests` are some batches of `dataset`, in increasing seq."""
    if not manifests:
        raise BadInput(f"no committed batch of {dataset.name} to describe")
    seqs = [m.seq for m in manifests]
    if any(b <= a for a, b in pairwise(seqs)):
        raise BadInput(f"manifests of {dataset.name} must be in strictly increasing seq, got {seqs}")
    other = next((m for m in manifests if m.data.get("dataset") != dataset.name), None)
    if other is not None:
        raise BadInput(f"batch {other.seq} is of dataset {other.data.get('dataset')!r}, not {dataset.name!r}")


def _license_url(license_: str) -> str:
    """An SPDX id as the URL of its licence text (Croissant recommends a licence URL)."""
    return license_ if license_.startswith(("http://", "https://")) else f"https://spdx.org/licenses/{license_}.html"


def _description(dataset: Dataset, manifests: Sequence[Manifest]) -> str:
    rows = sum(m.tree_size for m in manifests)
    first, last = manifests[0].seq, manifests[-1].seq
    if dataset.signed:
        signed = ("Every source file is signed by its contributor (EIP-191) and a row whose contributor is not the "
                  "signer is rejected, so each row's contributor attested it.")
    else:
        signed = "Contributors are declared in the contribution files, not signed."
    return "\n\n".join(part for part in (dataset.description, (
        f"This Croissant document covers {len(manifests)} batch(es) of the anchorlake dataset {dataset.name}, "
        f"seq {first} to {last}, {rows} rows in the record set '{ROWS}', in leaf order. "
        f"Every row carries its contributor (the 'contributor' column). {signed} "
        "Only accepted rows are here: records that failed the dataset's Great Expectations suite or duplicated an "
        "earlier row were quarantined. Each batch is committed by a manifest that pins every data file's SHA-256 and "
        "the RFC 9162 Merkle root over the batch's rows; anchorlake anchors the root, tree size and manifest SHA-256 "
        f"of each batch in its BatchAnchor contract under dataset id 0x{dataset.dataset_id.hex()}. The record set "
        f"'{BATCHES}' lists them; `anchorlake audit --dataset {dataset.name}` checks files, manifests and anchors.")) if part)


def _cite_as(dataset: Dataset, manifests: Sequence[Manifest]) -> str:
    """A BibTeX entry naming the training set: `(dataset, seq, manifest_sha256)` of the last batch
    when the batches are all of 0..seq (its manifest's history names the earlier ones), else each
    batch by its own manifest SHA-256."""
    last = manifests[-1]
    if [m.seq for m in manifests] == list(range(last.seq + 1)):
        title = f"batches 0 to {last.seq}"
        names = (f"(dataset, seq, manifest_sha256) = ({dataset.name}, {last.seq}, {last.sha256}) names every row "
                 f"of batches 0 to {last.seq} through the manifest chain and its history root")
    else:
        title = "batches " + ", ".join(str(m.seq) for m in manifests)
        names = "; ".join(f"({dataset.name}, {m.seq}, {m.sha256})" for m in manifests) + \
            ": each (dataset, seq, manifest_sha256) names one batch's rows"
    return (f"@misc{{anchorlake-{dataset.name}-{last.seq},\n"
            f"  title = {{{dataset.name}, {title}}},\n"
            f"  howpublished = {{anchorlake dataset {dataset.name}, batch {last.seq}, manifest SHA-256 {last.sha256}}},\n"
            f"  note = {{{names}}}\n}}")


def _file_objects(manifests: Sequence[Manifest], content_url: Callable[[int, str], str]) -> Iterator[dict[str, Any]]:
    """One FileObject per data file, in leaf order, with the SHA-256 and size its manifest pins."""
    for m in manifests:
        for entry in m.data["files"]:
            yield {
                "@type": "cr:FileObject",
                "@id": f"batch-{m.seq:06d}/{entry['path']}",
                "name": f"batch-{m.seq:06d}/{entry['path']}",
                "description": f"Batch {m.seq}, rows: {entry['rows']}; pinned by its manifest {m.sha256}.",
                "contentUrl": content_url(m.seq, entry["path"]),
                "encodingFormat": PARQUET,
                "contentSize": f"{entry['bytes']} B",
                "sha256": entry["sha256"],
            }


def _file_set(urls: Sequence[str]) -> dict[str, Any]:
    """The data files as one set, so one record set reads them all (a field has one source)."""
    return {
        "@type": "cr:FileSet",
        "@id": FILE_SET,
        "name": FILE_SET,
        "description": "The data files of the FileObjects above, each included by its exact path, read in leaf order.",
        "encodingFormat": PARQUET,
        "includes": list(urls),
    }


def _rows(dataset: Dataset) -> dict[str, Any]:
    """The record set of the data: one field per committed column (SPEC §4)."""
    key = [{"@id": f"{ROWS}/{name}"} for name in dataset.dedupe_key]
    return {
        "@type": "cr:RecordSet",
        "@id": ROWS,
        "name": ROWS,
        "description": "The accepted rows, in leaf order: batch by batch, then data file, then row.",
        **({"key": key} if key else {}),
        "field": [_field(column) for column in dataset.committed_columns],
    }


def _field(column: Column) -> dict[str, Any]:
    described = {"contributor": CONTRIBUTOR, "salt": SALT}.get(column.name, column.description)
    array = {"isArray": True, "arrayShape": "-1"} if column.type == "list<string>" else {}
    return {
        "@type": "cr:Field",
        "@id": f"{ROWS}/{column.name}",
        "name": column.name,
        **({"description": described} if described else {}),
        "dataType": DATA_TYPES[column.type],
        **array,
        "source": {"fileSet": {"@id": FILE_SET}, "extract": {"column": column.name}},
    }


BATCH_FIELDS = (
    ("seq", "sc:Integer", "The batch number, 0, 1, 2, … in commit order."),
    ("created_at", "sc:DateTime", "When the batch was committed (UTC)."),
    ("manifest_sha256", "sc:Text", "SHA-256 of the batch's manifest: what is anchored, and what to cite."),
    ("merkle_root", "sc:Text", "RFC 9162 Merkle root (hex) over the batch's rows in leaf order."),
    ("history_root", "sc:Text", "RFC 9162 root over the manifest SHA-256s of batches 0 to seq - 1 (SPEC §13.9)."),
    ("rows", "sc:Integer", "Accepted rows of the batch: the Merkle tree size."),
    ("first_row", "sc:Integer", f"Position in '{ROWS}' of the batch's first row (its leaf 0)."),
    ("quarantined", "sc:Integer", "Records of the batch rejected by the quality gate (not published)."),
    ("duplicate", "sc:Integer", "Records of the batch that duplicated an earlier row (not published)."),
    ("contributors", "sc:Integer", "Distinct contributors of the batch's rows, where known."),
)


def _batches(manifests: Sequence[Manifest], contributors: Mapping[int, int]) -> dict[str, Any]:
    """The record set of the batches, embedded: what each batch committed and anchored."""
    records, first_row = [], 0
    for m in manifests:
        history = m.data.get("history")
        values = {"seq": m.seq, "created_at": m.data["created_at"], "manifest_sha256": m.sha256,
                  "merkle_root": m.root, "history_root": history["root"] if isinstance(history, dict) else None,
                  "rows": m.tree_size, "first_row": first_row, "quarantined": m.data["counts"]["quarantined"],
                  "duplicate": m.data["counts"]["duplicate"], "contributors": contributors.get(m.seq)}
        records.append({f"{BATCHES}/{name}": values[name] for name, _, _ in BATCH_FIELDS})
        first_row += m.tree_size
    return {
        "@type": "cr:RecordSet",
        "@id": BATCHES,
        "name": BATCHES,
        "description": "One record per batch: the commitments anchorlake anchors on chain, and the batch's counts.",
        "key": {"@id": f"{BATCHES}/seq"},
        "field": [{"@type": "cr:Field", "@id": f"{BATCHES}/{name}", "name": name, "description": text,
                   "dataType": kind} for name, kind, text in BATCH_FIELDS],
        "data": records,
    }
