"""Engine and salt settings (SPEC §13.11): what ANCHORLAKE_ENGINE and the test-only salt seed
accept, and that pinned salts are a function of the row's place, fresh ones random."""

from __future__ import annotations

import pytest

from pipeline import config
from pipeline.errors import BadInput
from pipeline.ingest.salts import salt_hex

pytestmark = pytest.mark.unit
LOCAL = {"ANCHORLAKE_RPC_URL": "http://127.0.0.1:8545"}


def test_the_engine_is_local_unless_ray_is_named_and_a_misspelt_one_is_refused_by_every_command() -> None:
    assert config.engine({}) == "local" and config.engine({"ANCHORLAKE_ENGINE": "ray"}) == "ray"
    with pytest.raises(BadInput, match="ANCHORLAKE_ENGINE must be one of local, ray, got 'spark'"):
        config.load({"ANCHORLAKE_ENGINE": "spark"})


@pytest.mark.parametrize("env", [
    {"ANCHORLAKE_LAKE": "file:///tmp/lake"} | LOCAL,
    {"ANCHORLAKE_LAKE": "s3://b/p", "AWS_ENDPOINT_URL": "http://127.0.0.1:8333"} | LOCAL,
    {"ANCHORLAKE_LAKE": "s3://b/p", "AWS_ENDPOINT_URL_S3": "http://[::1]:8333"} | LOCAL,
    {},  # the embedded default: a file:// lake and the local devnet
])
def test_the_salt_seed_is_taken_for_a_lake_and_chain_on_this_machine(env: dict[str, str]) -> None:
    assert config.salt_seed(env | {"ANCHORLAKE_TEST_SALT_SEED": "s"}) == b"s"
    assert config.salt_seed(env) is None


@pytest.mark.parametrize("env, named", [
    ({"ANCHORLAKE_RPC_URL": "https://rpc.example.org"}, "ANCHORLAKE_RPC_URL"),
    ({"ANCHORLAKE_LAKE": "s3://b/p"} | LOCAL, "the S3 endpoint"),  # AWS itself
    ({"ANCHORLAKE_LAKE": "s3://b/p", "AWS_ENDPOINT_URL": "http://10.0.0.5:8333"} | LOCAL, "the S3 endpoint"),
    ({"ANCHORLAKE_LAKE": "s3://b/p", "AWS_ENDPOINT_URL": "http://127.0.0.1.example.org"} | LOCAL, "the S3 endpoint"),
    ({"ANCHORLAKE_RPC_URL": "http://localhost.evil:8545"}, "ANCHORLAKE_RPC_URL"),
    ({"ANCHORLAKE_RPC_URL": "http://evil.example.org\\@127.0.0.1:8545/"}, "ANCHORLAKE_RPC_URL"),  # HTTP clients go to evil
    ({"ANCHORLAKE_RPC_URL": "http://user@127.0.0.1:8545/"}, "ANCHORLAKE_RPC_URL"),
])
def test_the_salt_seed_is_refused_by_every_command_wherever_a_run_could_publish(env: dict[str, str],
                                                                                named: str) -> None:
    with pytest.raises(BadInput, match=f"for tests only; refused with {named} beyond this machine"):
        config.load(env | {"ANCHORLAKE_TEST_SALT_SEED": "s"})


def test_timestamp_text_outside_years_1_to_9999_is_refused_not_written_wrong() -> None:
    import pyarrow as pa

    from pipeline.lake.columnar import timestamp_texts

    year_0 = -62_135_596_800_000_000 - 1  # a microsecond before 0001-01-01
    for micros in (year_0, 253_402_300_800_000_000):  # ... and 10000-01-01
        with pytest.raises(ValueError, match="before year 1 or after 9999"):
            timestamp_texts(pa.array([0, micros], pa.int64()).cast(pa.timestamp("us", tz="UTC")))


def test_pinned_salts_follow_the_row_and_fresh_ones_are_random(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = salt_hex(0, [1, 2, 3])
    assert len(fresh) == 96 and int(fresh, 16) >= 0 and fresh != salt_hex(0, [1, 2, 3])
    monkeypatch.setenv("ANCHORLAKE_TEST_SALT_SEED", "s")
    monkeypatch.delenv("ANCHORLAKE_LAKE", raising=False)
    monkeypatch.delenv("ANCHORLAKE_RPC_URL", raising=False)
    pinned = salt_hex(0, [1, 2, 3])
    assert pinned == salt_hex(0, [1]) + salt_hex(0, [2, 3]) and len(set(pinned[i:i + 32] for i in (0, 32, 64))) == 3
    assert pinned[:32] != salt_hex(1, [1]) and pinned[:32] == salt_hex(0, [1])
