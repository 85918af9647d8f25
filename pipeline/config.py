"""Configuration: the only module that reads the environment (SPEC §11).

Everything else receives a `Settings` value. Under Airflow the same names are set on the
worker (or mapped from Connections by the DAG file) before the task calls into pipeline/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import BadInput

# Four keys, four roles (SPEC §13.5): admin deploys and grants roles, anchorer anchors, distributor
# publishes rewards roots, treasury holds the reward token and approves the distributor.
ROLES = ("admin", "anchorer", "distributor", "treasury")
# anvil's funded accounts 0-3 (mnemonic "test test ... junk"), one per role: defaults only for the
# local devnet, never for a chain the user names.
DEVNET_KEYS = {
    "admin": "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "anchorer": "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "distributor": "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "treasury": "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
}
# anvil's account 4: a contributor of the local devnet (signs contributions, pays for claims).
DEVNET_CONTRIBUTOR_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"
DEVNET_CHAIN_ID = 31337


def cores() -> int:
    """The cores this process may run on: how many worker processes parallel work starts."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def scratch_dir(env: Mapping[str, str] | None = None) -> str | None:
    """Where a commit's shuffle files go (ANCHORLAKE_SCRATCH): a directory every worker of the
    engine reaches (on a cluster, a volume shared by its nodes); None for the system's temp dir."""
    return (os.environ if env is None else env).get("ANCHORLAKE_SCRATCH") or None


ENGINES = ("local", "ray")


def cache_dir(lake_url: str, dataset: str, env: Mapping[str, str] | None = None) -> Path:
    """Where open_dataset keeps a dataset's verified copies: ANCHORLAKE_CACHE, else the user's
    cache folder (XDG_CACHE_HOME or ~/.cache)/anchorlake, one folder per lake and dataset."""
    import hashlib

    env = os.environ if env is None else env
    root = env.get("ANCHORLAKE_CACHE") or str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anchorlake")
    return Path(root) / hashlib.sha256(lake_url.encode()).hexdigest()[:16] / dataset


def engine(env: Mapping[str, str] | None = None) -> str:
    """Where a batch's parsing, typing, hashing and checking run (SPEC §13.11): ANCHORLAKE_ENGINE,
    `local` (worker processes on this machine, the default) or `ray` (the cluster at RAY_ADDRESS)."""
    env = os.environ if env is None else env
    name = env.get("ANCHORLAKE_ENGINE") or "local"
    if name not in ENGINES:
        raise BadInput(f"ANCHORLAKE_ENGINE must be one of {', '.join(ENGINES)}, got {name[:40]!r}")
    return name


def salt_seed(env: Mapping[str, str] | None = None) -> bytes | None:
    """ANCHORLAKE_TEST_SALT_SEED, the test-only seed that pins every salt (see ingest.salts), or
    None. Pinned salts make rows guessable from their leaves, so the seed is refused unless the
    lake and the chain are both on this machine (file:// or loopback): a local test setup."""
    env = os.environ if env is None else env
    seed = env.get("ANCHORLAKE_TEST_SALT_SEED")
    if not seed:
        return None
    lake = env.get("ANCHORLAKE_LAKE") or "file:"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
    places = {"ANCHORLAKE_RPC_URL": env.get("ANCHORLAKE_RPC_URL") or "http://127.0.0.1",
              **({"the S3 endpoint": endpoint} if lake.startswith("s3:") else {"ANCHORLAKE_LAKE": lake})}
    remote = [name for name, url in places.items() if not _on_this_machine(url)]
    if remote:
        raise BadInput(f"ANCHORLAKE_TEST_SALT_SEED pins every salt and is for tests only; refused with "
                       f"{', '.join(remote)} beyond this machine")
    return seed.encode()


def _on_this_machine(url: str) -> bool:
    from urllib.parse import urlsplit

    if "\\" in url or "@" in url:  # read differently by urllib and by HTTP clients: never taken as local
        return False
    parts = urlsplit(url)
    return parts.scheme == "file" or parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "::1")


def inside_ray_job(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a Ray job's driver (its runtime environment is the job's)."""
    env = os.environ if env is None else env
    return bool(env.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def key_variable(role: str) -> str:
    return f"ANCHORLAKE_{role.upper()}_KEY"


def address_variable(role: str) -> str:
    return f"ANCHORLAKE_{role.upper()}_ADDRESS"


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"


@dataclass(frozen=True)
class Settings:
    home: Path
    lake_url: str
    s3: S3Settings
    rpc_url: str | None
    confirmations: int
    datasets_dir: Path
    samples_dir: Path
    contracts: Mapping[str, str] = field(default_factory=dict)
    replace_after: float = 30.0  # seconds a transaction may stay pending before its fees are bumped
    chain_timeout: float = 600.0  # seconds the anchor stage waits for inclusion and confirmations
    lease_seconds: float = 120.0  # how long a commit lease lives without renewal
    keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # role -> private key
    seal_secret: str | None = field(default=None, repr=False)  # ANCHORLAKE_SEAL_KEY
    addresses: Mapping[str, str] = field(default_factory=dict)  # role -> account, where no key is held here
    contributor_key: str | None = field(default=None, repr=False)  # ANCHORLAKE_CONTRIBUTOR_KEY

    def contributor(self) -> str:
        """A contributor's own key: signs contributions and pays the gas of claims (any funded
        account may; the tokens always go to the contributor claimed for)."""
        if not self.contributor_key:
            raise BadInput("no contributor key is configured: set ANCHORLAKE_CONTRIBUTOR_KEY")
        return self.contributor_key

    def key(self, role: str) -> str:
        """The private key of `role`; BadInput naming the variable when it is not configured."""
        if role not in self.keys:
            raise BadInput(f"no {role} key is configured: set {key_variable(role)}")
        return self.keys[role]

    def seal_key(self) -> bytes:
        """The key of the commit seal (core.seal): from ANCHORLAKE_SEAL_KEY, else the anchorer key.
        It never enters the lake, so a manifest written there by anyone else carries no valid seal."""
        secret = self.seal_secret or self.keys.get("anchorer")
        if not secret:
            raise BadInput("committing and anchoring need the seal key: set ANCHORLAKE_SEAL_KEY or "
                           "ANCHORLAKE_ANCHORER_KEY")
        return hashlib.sha256(b"anchorlake seal/1 key\0" + secret.encode("utf-8")).digest()

    def address(self, role: str) -> str | None:
        """The account of `role`: configured (ANCHORLAKE_<ROLE>_ADDRESS) or that of its key."""
        if role in self.addresses:
            return self.addresses[role]
        if role not in self.keys:
            return None
        from eth_account import Account

        try:
            return str(Account.from_key(self.keys[role]).address).lower()
        except Exception:
            raise BadInput(f"{key_variable(role)} is not a valid private key") from None


REPO_ROOT = Path(__file__).resolve().parent.parent


def _devnet_url(home: Path) -> str | None:
    """The RPC URL of the devnet `anchorlake up` started, if its record exists."""
    record = home / "devnet" / "devnet.json"
    try:
        return str(json.loads(record.read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None


def from_connections(lake: Any = None, chain: Any = None, signers: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Settings from Airflow Connections, as the environment names they stand for.

    `lake` (conn id `anchorlake_lake`): extra `lake` (s3://… or file://…), extra `endpoint_url`
    or host, login and password (the S3 keys), extra `region`. `chain` (conn id `anchorlake_chain`):
    extra `rpc_url` or host, password (the anchorer key), extras `confirmations`, `replace_after`,
    `batch_anchor`, `reward_distributor`, `reward_token`, `admin_address`. `signers`: role ->
    connection (conn ids `anchorlake_<role>`) whose password is that role's key. Objects need only
    host, login, password and extra_dejson, so this takes any Connection without importing Airflow.
    """
    out: dict[str, str] = {}

    def put(name: str, value: Any) -> None:
        if value not in (None, ""):
            out[name] = str(value)

    if lake is not None:
        extra = dict(getattr(lake, "extra_dejson", None) or {})
        put("ANCHORLAKE_LAKE", extra.get("lake"))
        put("AWS_ENDPOINT_URL", extra.get("endpoint_url") or getattr(lake, "host", None))
        put("AWS_ACCESS_KEY_ID", getattr(lake, "login", None))
        put("AWS_SECRET_ACCESS_KEY", getattr(lake, "password", None))
        put("AWS_REGION", extra.get("region"))
    if chain is not None:
        extra = dict(getattr(chain, "extra_dejson", None) or {})
        put("ANCHORLAKE_RPC_URL", extra.get("rpc_url") or getattr(chain, "host", None))
        put("ANCHORLAKE_ANCHORER_KEY", getattr(chain, "password", None))
        put("ANCHORLAKE_ADMIN_ADDRESS", extra.get("admin_address"))
        for key, name in (("confirmations", "ANCHORLAKE_CONFIRMATIONS"), ("replace_after", "ANCHORLAKE_REPLACE_AFTER"),
                          ("batch_anchor", "ANCHORLAKE_BATCH_ANCHOR"),
                          ("reward_distributor", "ANCHORLAKE_REWARD_DISTRIBUTOR"),
                          ("reward_token", "ANCHORLAKE_REWARD_TOKEN")):
            put(name, extra.get(key))
    for role, connection in (signers or {}).items():
        if connection is not None:
            put(key_variable(role), getattr(connection, "password", None))
    return out


def load(env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment (or the given mapping), then `overrides` (for
    example from_connections(...) under Airflow)."""
    env = dict(os.environ if env is None else env) | dict(overrides or {})
    home = Path(env.get("ANCHORLAKE_HOME", ".anchorlake")).resolve()
    lake_url = env.get("ANCHORLAKE_LAKE") or (home / "lake").as_uri()
    raw_conf = env.get("ANCHORLAKE_CONFIRMATIONS", "1")
    try:
        confirmations = int(raw_conf)
        if confirmations < 1:
            raise ValueError
    except ValueError:
        raise BadInput(f"ANCHORLAKE_CONFIRMATIONS must be a whole number >= 1, got {raw_conf!r}") from None
    engine(env)  # a misspelt engine or a refused salt seed fail every command at once, not mid-batch
    salt_seed(env)
    replace_after = _seconds(env, "ANCHORLAKE_REPLACE_AFTER", "30")
    chain_timeout = _seconds(env, "ANCHORLAKE_CHAIN_TIMEOUT", "600")
    lease_seconds = _seconds(env, "ANCHORLAKE_LEASE_SECONDS", "120")
    rpc_url = env.get("ANCHORLAKE_RPC_URL") or None
    keys = {role: env[key_variable(role)] for role in ROLES if env.get(key_variable(role))}
    contributor_key = env.get("ANCHORLAKE_CONTRIBUTOR_KEY") or None
    if rpc_url is None:
        rpc_url = _devnet_url(home)
        keys = DEVNET_KEYS | keys  # the devnet's well-known keys are defaults only for the local devnet
        contributor_key = contributor_key or DEVNET_CONTRIBUTOR_KEY
    contracts = {
        name: checked_address(env[var], var)
        for name, var in (
            ("BatchAnchor", "ANCHORLAKE_BATCH_ANCHOR"),
            ("RewardDistributor", "ANCHORLAKE_REWARD_DISTRIBUTOR"),
            ("RewardToken", "ANCHORLAKE_REWARD_TOKEN"),
        )
        if env.get(var)
    }
    return Settings(
        home=home,
        lake_url=lake_url,
        s3=S3Settings(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        ),
        rpc_url=rpc_url,
        confirmations=confirmations,
        datasets_dir=Path(env.get("ANCHORLAKE_DATASETS", str(REPO_ROOT / "expectations"))),
        samples_dir=Path(env.get("ANCHORLAKE_SAMPLES", str(REPO_ROOT / "samples"))),
        contracts=contracts,
        replace_after=replace_after,
        chain_timeout=chain_timeout,
        lease_seconds=lease_seconds,
        keys=keys,
        seal_secret=env.get("ANCHORLAKE_SEAL_KEY") or None,
        addresses=_addresses(env),
        contributor_key=contributor_key,
    )


def _seconds(env: Mapping[str, str], variable: str, default: str) -> float:
    """A duration from the environment: a finite number of seconds > 0."""
    text = env.get(variable) or default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"{variable} must be a number of seconds > 0, got {text[:40]!r}")
    return value


def checked_address(value: str, what: str) -> str:
    """`value` as a lowercase 0x address; BadInput saying `what` must be one otherwise."""
    lower = value.lower()
    if not re.fullmatch(r"0x[0-9a-f]{40}", lower):
        raise BadInput(f"{what} must be 0x and 40 hex digits")
    return lower


def _addresses(env: Mapping[str, str]) -> dict[str, str]:
    return {role: checked_address(env[address_variable(role)], address_variable(role))
            for role in ROLES if env.get(address_variable(role))}


def fault_point(name: str, env: Mapping[str, str] | None = None) -> None:
    """Die on the spot (SIGKILL) if ANCHORLAKE_FAULT names this point, or stall there if
    ANCHORLAKE_STALL is `name:seconds`: how the tests kill or stall a stage at an exact instant.
    Unset in production; costs two dictionary lookups."""
    env = os.environ if env is None else env
    if env.get("ANCHORLAKE_FAULT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    point, _, seconds = env.get("ANCHORLAKE_STALL", "").partition(":")
    if point == name:
        import time

        time.sleep(float(seconds or 0))


def test_hooks(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The fault and stall points that are set (see fault_point), for a Ray task to see them too."""
    env = os.environ if env is None else env
    return {name: env[name] for name in ("ANCHORLAKE_FAULT", "ANCHORLAKE_STALL") if env.get(name)}


def iceberg_catalog(home: Path, env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(catalog, warehouse) of the datasets' Iceberg tables. ANCHORLAKE_ICEBERG_CATALOG: a SQLAlchemy
    URI (`sqlite:////abs/path.db`, `postgresql+psycopg2://…`) or `rest:<http(s) URL>`; default a
    SQLite file beside the default lake, `<home>/iceberg.db`. ANCHORLAKE_ICEBERG_WAREHOUSE: where
    table metadata is written, or None for the default (`<lake>/iceberg`; a REST catalog's own)."""
    env = os.environ if env is None else env
    uri = env.get("ANCHORLAKE_ICEBERG_CATALOG") or f"sqlite:///{home / 'iceberg.db'}"
    rest = uri.startswith("rest:")
    if not re.match(r"https?://" if rest else r"[A-Za-z][A-Za-z0-9+_.-]*://", uri.removeprefix("rest:")):
        raise BadInput("ANCHORLAKE_ICEBERG_CATALOG must be a SQLAlchemy URI (sqlite:///…, postgresql://…) "
                       "or rest:http(s)://…")
    return uri, env.get("ANCHORLAKE_ICEBERG_WAREHOUSE") or None


def rpc_url_is_external(env: Mapping[str, str] | None = None) -> bool:
    """True when the user pointed anchorlake at their own chain (no local devnet)."""
    env = os.environ if env is None else env
    return bool(env.get("ANCHORLAKE_RPC_URL"))
