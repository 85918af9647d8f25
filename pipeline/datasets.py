"""Dataset declarations (SPEC §2): schema, suite, dedupe key and reward rule, from files.

A dataset is `expectations/<name>.dataset.json` beside its Great Expectations suite. Adding a
dataset means adding those two files; no Python changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import FormatError, NotFound

FORMAT = "anchorlake.dataset/1"
TYPES = ("string", "int64", "float64", "bool", "timestamp", "list<string>")
RESERVED = ("contributor", "salt")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def dataset_id(name: str) -> bytes:
    """keccak256(bytes(name)), the on-chain id of a dataset (SPEC §8)."""
    from eth_hash.auto import keccak

    return bytes(keccak(name.encode("utf-8")))


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    max_length: int | None = None  # characters for strings, items for lists
    description: str = field(default="", compare=False)  # documentation only (Croissant field description)


RULES = ("proportional/1", "per_unit/1")
WEIGHTS = ("rows", "characters")


@dataclass(frozen=True)
class RewardSpec:
    """How a batch pays (SPEC §13.8): `proportional/1` splits `pool` base units per batch by
    weight; `per_unit/1` pays `rate` base units per unit of weight. A weight is computed by the
    pipeline from accepted rows, never read from a value the contributor wrote: one per row
    ("rows") or the characters of the row's text columns ("characters")."""

    rule: str
    pool: int  # base units per batch (proportional/1); 0 for per_unit/1
    unit: str
    payout: str  # "token" (on-chain ERC-20) or "points" (ledger and root only)
    weight: str = "rows"
    rate: int = 0  # base units per weight unit (per_unit/1); 0 for proportional/1

    def terms(self) -> dict[str, str]:
        """What the manifest records of the rule, to be checked against the declaration."""
        amount = {"pool": str(self.pool)} if self.rule == "proportional/1" else {"rate": str(self.rate)}
        return {"rule": self.rule, **amount, "weight": self.weight, "payout": self.payout}


@dataclass(frozen=True)
class Limits:
    """What one source may hold; a source past a limit is quarantined with its reason."""

    source_bytes: int = 1 << 30  # decompressed bytes (source_too_large)
    source_rows: int = 10_000_000  # records or lines (too_many_rows)


@dataclass(frozen=True)
class Dataset:
    name: str
    columns: tuple[Column, ...]
    dedupe_key: tuple[str, ...]
    unknown_columns: str  # "quarantine" or "drop"
    max_record_bytes: int
    suite_path: Path
    rewards: RewardSpec
    limits: Limits = Limits()
    signed: bool = False  # contributors: "signed": each source carries its contributor's signature (§13.7)
    suite_bytes: bytes | None = field(default=None, repr=False)  # the suite as loaded: a Ray worker has no file
    description: str = ""
    license: str | None = None  # an SPDX licence id (CC-BY-4.0) or the URL of a licence
    rai: tuple[tuple[str, str], ...] = ()  # Croissant RAI fields (RAI_KEYS), in declaration order

    def suite_file(self) -> bytes:
        """The suite's bytes: as loaded, or read now if they could not be then."""
        return self.suite_bytes if self.suite_bytes is not None else self.suite_path.read_bytes()

    @property
    def dataset_id(self) -> bytes:
        """keccak256(bytes(name)), the on-chain id (SPEC §8)."""
        return dataset_id(self.name)

    @property
    def committed_columns(self) -> tuple[Column, ...]:
        """Schema columns plus `contributor` and `salt`, the columns every leaf covers."""
        return self.columns + (Column("contributor", "string"), Column("salt", "string"))

    def suite_json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.suite_file())
        except (OSError, ValueError) as e:
            raise FormatError(str(self.suite_path), "(file)", f"unreadable suite: {e}") from None
        except RecursionError:
            raise FormatError(str(self.suite_path), "(file)", "unreadable suite: JSON nested too deeply") from None
        if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
            raise FormatError(str(self.suite_path), "expectations", "must be a list")
        return data

    def suite_sha256(self) -> str:
        return hashlib.sha256(self.suite_file()).hexdigest()


def _require(data: dict[str, Any], key: str, kind: type, source: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise FormatError(source, key, f"must be a {kind.__name__}")
    return value


KEYS = ("format", "name", "description", "license", "rai", "columns", "dedupe_key", "unknown_columns",
        "max_record_bytes", "limits", "suite", "rewards", "contributors")
COLUMN_KEYS = ("name", "type", "max_length", "description")
REWARD_KEYS = ("rule", "pool", "rate", "unit", "payout", "weight")
LIMIT_KEYS = ("source_bytes", "source_rows")
# The Croissant RAI vocabulary's text properties (http://mlcommons.org/croissant/RAI/) that
# mlcroissant reads under the same names; each is declared as one string.
RAI_KEYS = ("dataCollection", "dataCollectionType", "dataCollectionRawData", "dataCollectionMissingData",
            "dataPreprocessingProtocol", "dataImputationProtocol", "dataAnnotationProtocol", "dataAnnotationPlatform",
            "dataAnnotationAnalysis", "annotationsPerItem", "annotatorDemographics", "machineAnnotationTools",
            "personalSensitiveInformation", "dataUseCases", "dataLimitations", "dataBiases", "dataSocialImpact",
            "dataReleaseMaintenancePlan")
_LICENSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}|https?://\S+")  # whole string (fullmatch)


def _object(value: Any, keys: tuple[str, ...], where: str, source: str) -> dict[str, Any]:
    """`value` as an object holding only `keys`: a misspelled key is an error, never ignored."""
    if not isinstance(value, dict):
        raise FormatError(source, where, "must be an object")
    unknown = sorted(str(k) for k in value if k not in keys)
    if unknown:
        raise FormatError(source, where, f"unknown key {unknown[0]!r} (known: {', '.join(keys)})")
    return value


def _positive(data: dict[str, Any], key: str, default: int, source: str, prefix: str = "") -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FormatError(source, prefix + key, "must be a positive integer")
    return value


def parse(data: Any, source: str, base: Path) -> Dataset:
    """Validate a dataset declaration; raise FormatError naming the file and field."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FormatError(source, "format", f"expected {FORMAT!r}")
    _object(data, KEYS, "(declaration)", source)
    name = _require(data, "name", str, source)
    if not _NAME.match(name):
        raise FormatError(source, "name", "must be lowercase letters, digits and '_'")
    columns = []
    seen: set[str] = set()
    for i, col in enumerate(_require(data, "columns", list, source)):
        where = f"columns[{i}]"
        if not isinstance(_object(col, COLUMN_KEYS, where, source).get("name"), str):
            raise FormatError(source, where, "must be an object with a name")
        cname, ctype = col["name"], col.get("type")
        if not _NAME.match(cname) or cname in RESERVED or cname in seen:
            raise FormatError(source, f"{where}.name", f"{cname!r} is invalid, reserved or repeated")
        if ctype not in TYPES:
            raise FormatError(source, f"{where}.type", f"must be one of {', '.join(TYPES)}")
        max_length = col.get("max_length")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise FormatError(source, f"{where}.max_length", "must be a positive integer")
        description = col.get("description", "")
        if not isinstance(description, str):
            raise FormatError(source, f"{where}.description", "must be a string")
        seen.add(cname)
        columns.append(Column(cname, ctype, max_length, description))
    dedupe = tuple(_require(data, "dedupe_key", list, source))
    for key in dedupe:
        if key not in seen:
            raise FormatError(source, "dedupe_key", f"{key!r} is not a column")
    unknown = data.get("unknown_columns", "quarantine")
    if unknown not in ("quarantine", "drop"):
        raise FormatError(source, "unknown_columns", "must be 'quarantine' or 'drop'")
    max_record_bytes = _positive(data, "max_record_bytes", 1 << 20, source)
    given = _object(data.get("limits", {}), LIMIT_KEYS, "limits", source)
    limits = Limits(**{k: _positive(given, k, getattr(Limits, k), source, "limits.") for k in LIMIT_KEYS})
    suite_path = base / _require(data, "suite", str, source)
    rewards = _reward_spec(_require(data, "rewards", dict, source), source)
    contributors = data.get("contributors", "declared")
    if contributors not in ("declared", "signed"):
        raise FormatError(source, "contributors", "must be 'declared' or 'signed'")
    try:
        suite_bytes: bytes | None = suite_path.read_bytes()
    except OSError:  # reported when the suite is used (anchorlake check names it)
        suite_bytes = None
    return Dataset(name, tuple(columns), dedupe, unknown, max_record_bytes, suite_path, rewards, limits,
                   contributors == "signed", suite_bytes, **_documentation(data, source))


def _documentation(data: dict[str, Any], source: str) -> dict[str, Any]:
    """What the declaration says about the dataset for its readers (Croissant): description,
    licence and RAI fields. A misspelled RAI key is an error, as everywhere in a declaration."""
    description = data.get("description", "")
    if not isinstance(description, str):
        raise FormatError(source, "description", "must be a string")
    license_ = data.get("license")
    if license_ is not None and (not isinstance(license_, str) or not _LICENSE.fullmatch(license_)):
        raise FormatError(source, "license", "must be an SPDX licence id (e.g. CC-BY-4.0) or an http(s) URL")
    rai = _object(data.get("rai", {}), RAI_KEYS, "rai", source)
    for key, value in rai.items():
        if not isinstance(value, str) or not value.strip():
            raise FormatError(source, f"rai.{key}", "must be a non-empty string")
    return {"description": description, "license": license_, "rai": tuple(rai.items())}


def _reward_spec(value: dict[str, Any], source: str) -> RewardSpec:
    if "weight_column" in value:
        raise FormatError(source, "rewards.weight_column", "is not accepted: a weight never comes from a value the "
                                                           f"contributor wrote; declare weight: {' or '.join(WEIGHTS)}")
    r = _object(value, REWARD_KEYS, "rewards", source)
    rule = r.get("rule")
    if rule not in RULES:
        raise FormatError(source, "rewards.rule", f"must be one of {', '.join(RULES)}")
    takes, other = ("pool", "rate") if rule == "proportional/1" else ("rate", "pool")
    if other in r:
        raise FormatError(source, f"rewards.{other}", f"does not apply to {rule}, which takes {takes}")
    amount = _base_units(r, takes, source)
    payout = r.get("payout", "token")
    if payout not in ("token", "points"):
        raise FormatError(source, "rewards.payout", "must be 'token' or 'points'")
    weight = r.get("weight", "rows")
    if weight not in WEIGHTS:
        raise FormatError(source, "rewards.weight", f"must be one of {', '.join(WEIGHTS)}")
    return RewardSpec(rule=rule, pool=amount if takes == "pool" else 0, unit=str(r.get("unit", "base units")),
                      payout=payout, weight=weight, rate=amount if takes == "rate" else 0)


def _base_units(r: dict[str, Any], key: str, source: str) -> int:
    """A decimal string of base units >= 0 (base units do not fit a JSON double)."""
    text = r.get(key)
    if not isinstance(text, str) or not text.isdigit() or not text.isascii():
        raise FormatError(source, f"rewards.{key}", "must be a decimal string of base units >= 0")
    return int(text)


def load(directory: Path, name: str) -> Dataset:
    path = directory / f"{name}.dataset.json"
    if not _NAME.match(name) or not path.is_file():
        known = ", ".join(available(directory)) or "none"
        raise NotFound(f"unknown dataset {name!r} (known: {known})")
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise FormatError(str(path), "(file)", f"unreadable: {e.strerror}") from None
    except ValueError as e:
        raise FormatError(str(path), "(file)", f"invalid JSON: {e}") from None
    except RecursionError:
        raise FormatError(str(path), "(file)", "JSON nested too deeply") from None
    dataset = parse(data, str(path), directory)
    if dataset.name != name:
        raise FormatError(str(path), "name", f"declares {dataset.name!r}, file is named {name!r}")
    return dataset


def available(directory: Path) -> list[str]:
    """The datasets declared in `directory`; NotFound if it is not a folder (ANCHORLAKE_DATASETS)."""
    if not directory.is_dir():
        raise NotFound(f"the dataset declarations folder {directory} does not exist (ANCHORLAKE_DATASETS)")
    return sorted(p.name[: -len(".dataset.json")] for p in directory.glob("*.dataset.json"))
