"""The verifier anyone can run without Python (web/verify.mjs): from a terminal through
web/verify-cli.mjs and in a real headless Chromium through web/verify.html. Its trust anchors come
from the user (RPC, dataset name, contracts or a deployments file, or a root and tree size), never
from the receipt; each forged receipt fails naming the part that failed; with nothing to check
against it says so. One real flow (two batches) feeds every case."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.receipt import packed
from pipeline.devnet import Anvil

from conftest import OUTSIDER_KEY, REPO, base_env, cli, cli_json, contribute_one, trust_args

pytestmark = pytest.mark.e2e
SAMPLES = sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl"))
ALICE = "0x1111111111111111111111111111111111111111"
BOB = "0x2222222222222222222222222222222222222222"  # the next address: his rows come right after Alice's
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / ".test-artifacts" / "page"
VERIFY_CLI = REPO / "web" / "verify-cli.mjs"
SECRET_PATH = "/v3/SECRET-API-KEY-123?apikey=SECRET-QUERY-456"
BATCH_AMOUNT_NOT_CHECKED = ("batch amount not checked: the receipt shows no earlier cumulative amount, "
                            "and a rewards tree cannot prove there was none")
NOT_CHECKED_OFFLINE = "to the given root over the given tree size (the dataset and batch the receipt names are not checked offline)"
CLI_TRUST_HINT = "give --rpc URL with --deployment FILE (or --contract ADDR) and --dataset NAME, or --root HEX --tree-size N"


@dataclass(frozen=True)
class Lake:
    """A lake with two committed, anchored, rewarded batches, and the receipts the cases verify."""

    rpc: str
    env: dict[str, str]
    folder: Path
    deployment: Path  # the deployments file the user trusts (what `anchorlake up` reported)
    addresses: dict[str, Any]
    receipts: dict[str, Path]
    attacker_contract: str

    def text(self, name: str) -> str:
        return self.receipts[name].read_text()

    def data(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.text(name)))

    def rows_part(self, name: str = "genuine", shift: int = 0) -> str:
        """The part of the report that folds a receipt/2's rows: "rows [start, end)"."""
        span = self.data(name)["range"]
        return f"rows [{span['start'] + shift}, {span['end'] + shift})"


def node() -> str:
    found = shutil.which("node")
    assert found, "node (20) is required: the verifier page's code runs in it"
    return found


def verify_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node(), str(VERIFY_CLI), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_receipt_v1(env: dict[str, str], receipt: dict[str, Any]) -> dict[str, Any]:
    """The anchorlake.receipt/1 of a receipt/2's rows: one inclusion path per row, each served by
    `anchorlake proof` from the stored tree (leaf level first), as receipts were written before."""
    start, rows = receipt["range"]["start"], []
    for n, row in enumerate(receipt["rows"]):
        served = cli_json(env, "proof", "--dataset", receipt["dataset"], "--batch", str(receipt["seq"]), "--leaf", str(start + n))
        assert (served["tree_size"], served["root"]) == (receipt["tree_size"], receipt["root"]), served
        rows.append({"leaf_index": start + n, "record": row["record"], "path": served["path"]})
    kept = {k: v for k, v in receipt.items() if k not in ("range", "proof")}
    return kept | {"format": "anchorlake.receipt/1", "rows": rows}


@pytest.fixture(scope="module")
def lake(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    from anchoring.batch_anchor import anchor_batch
    from anchoring.chain import Chain
    from pipeline.core.jcs import canonical_bytes
    from pipeline.core.merkle import leaf_hash, range_proof_length
    from pipeline.datasets import dataset_id

    folder = tmp_path_factory.mktemp("page")
    env = base_env(folder) | {"ANCHORLAKE_LAKE": (folder / "lake").as_uri(), "ANCHORLAKE_RPC_URL": anvil.url}
    cli(env, "up")
    cli(env, "contribute", "--dataset", "instructions", *SAMPLES)
    assert [c["seq"] for c in cli_json(env, "run", "--dataset", "instructions")["committed"]] == [0]
    contribute_one(env, folder, "What does a Merkle root commit to?", ALICE)
    assert [c["seq"] for c in cli_json(env, "run", "--dataset", "instructions")["committed"]] == [1]
    deployment = Path(trust_args(env, folder)[1])

    def receipt(seq: int, contributor: str = ALICE) -> dict[str, Any]:
        path = folder / f"receipt-{seq}-{contributor}.json"
        cli(env, "receipt", "--dataset", "instructions", "--batch", str(seq), "--contributor", contributor, "-o", str(path))
        return dict(json.loads(path.read_text()))

    genuine, second, bob = receipt(0), receipt(1), receipt(0, BOB)
    assert genuine["format"] == "anchorlake.receipt/2" and len(genuine["rows"]) > 1
    size, start, end = genuine["tree_size"], genuine["range"]["start"], genuine["range"]["end"]
    cases: dict[str, dict[str, Any]] = {"genuine": genuine, "genuine-batch-1": second}

    edited = copy.deepcopy(genuine)
    prompt = edited["rows"][0]["record"]["prompt"]
    edited["rows"][0]["record"]["prompt"] = prompt[:-1] + ("x" if prompt[-1] != "x" else "y")
    cases["edited"] = edited
    flipped = genuine["proof"][0]
    cases["proof-flipped"] = genuine | {"proof": [("1" if flipped[0] != "1" else "2") + flipped[1:], *genuine["proof"][1:]]}
    # The same rows and proof one leaf to the right: a proof of the same length, so it folds, elsewhere.
    assert end < size and range_proof_length(size, start + 1, end + 1) == len(genuine["proof"])
    cases["range-shifted"] = genuine | {"range": {"start": start + 1, "end": end + 1}}
    # One leaf more in the tree keeps this proof's shape: the rows still fold to the root (a proof
    # alone does not bind the tree size), and only the anchored size tells.
    assert range_proof_length(size + 1, start, end) == len(genuine["proof"])
    cases["tree-size-changed"] = genuine | {"tree_size": size + 1}
    # Bob's genuine rows, proof and range, presented as Alice's (with Alice's genuine reward).
    cases["other-contributors-rows"] = bob | {"contributor": ALICE, "reward": genuine["reward"]}
    # The same row five times: one contributed row must not count as five.
    cases["duplicate-rows"] = genuine | {"rows": [genuine["rows"][0]] * len(genuine["rows"])}
    # Malformed: the proof or the rows do not fit the range (refused before anything is folded).
    cases["row-dropped"] = genuine | {"rows": genuine["rows"][:-1]}
    cases["proof-extra-hash"] = genuine | {"proof": [*genuine["proof"], "ab" * 32]}

    # A one-row receipt for a row never contributed, whose root the attacker anchored for the
    # dataset in a BatchAnchor of their own, and which names that contract.
    record = genuine["rows"][0]["record"] | {"prompt": "a row that was never contributed"}
    forged_root = leaf_hash(canonical_bytes(record))
    attacker = Chain(anvil.url, OUTSIDER_KEY)
    own = attacker.deploy("BatchAnchor", attacker.address, attacker.address)
    anchor_batch(attacker, own, dataset_id("instructions"), 0, forged_root, 1, bytes.fromhex(genuine["manifest_sha256"]))
    cases["forged"] = genuine | {"root": forged_root.hex(), "tree_size": 1, "range": {"start": 0, "end": 1}, "proof": [],
                                 "rows": [{"record": record}], "reward": None, "anchor": genuine["anchor"] | {"contract": own}}

    cases["relabelled"] = genuine | {"dataset": "preferences"}
    reward = genuine["reward"]
    cases["inflated"] = genuine | {"reward": reward | {"amount": str(10 * int(reward["amount"])),
                                                      "cumulative_amount": str(10 * int(reward["cumulative_amount"]))}}
    cases["batch-0-amount-changed"] = genuine | {"reward": reward | {"amount": str(int(reward["amount"]) + 1)}}
    # After batch 0 a receipt showing no earlier cumulative amount cannot have its batch amount
    # checked (a rewards tree proves what it holds, not what it lacks), whatever the amount says.
    cases["batch-1-without-previous"] = second | {"reward": second["reward"] | {"previous": None}}
    deleted = {k: v for k, v in second["reward"].items() if k != "previous"}
    cases["batch-1-previous-deleted"] = second | {"reward": deleted | {"amount": deleted["cumulative_amount"]}}
    cases["batch-1-amount-inflated"] = second | {"reward": second["reward"] | {"amount": str(10 * int(second["reward"]["amount"]))}}

    # Receipts written before receipt/2 keep verifying; their forgeries keep failing.
    v1 = as_receipt_v1(env, genuine)
    cases["genuine-v1"] = v1
    edited_v1 = copy.deepcopy(v1)
    edited_v1["rows"][0]["record"]["prompt"] = edited["rows"][0]["record"]["prompt"]
    cases["edited-v1"] = edited_v1
    cases["duplicate-rows-v1"] = v1 | {"rows": [v1["rows"][0]] * 5}

    (folder / "receipts").mkdir()
    paths = {}
    for name, data in cases.items():
        paths[name] = folder / "receipts" / f"{name}.json"
        paths[name].write_text(json.dumps(data, indent=1))
    return Lake(anvil.url, env, folder, deployment, json.loads(deployment.read_text()), paths, own)


@pytest.fixture(scope="module")
def web_url() -> Iterator[str]:
    """web/ served over HTTP on loopback: module scripts do not load from file://."""
    handler = functools.partial(QuietHandler, directory=str(REPO / "web"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- the command line -------------------------------------------------------------------------

def test_the_node_cli_verifies_genuine_receipts_against_the_users_chain_and_contracts(lake: Lake) -> None:
    trust = ["--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions"]
    proc = verify_cli(lake.receipts["genuine"], lake.receipts["genuine-batch-1"], lake.receipts["genuine-v1"], *trust)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    batch_anchor, distributor = lake.addresses["BatchAnchor"].lower(), lake.addresses["RewardDistributor"].lower()
    assert proc.stdout.count("OK ") == 3 and f"against BatchAnchor {batch_anchor} on chain 31337" in proc.stdout
    genuine = lake.data("genuine")
    # receipt/2: Alice's rows are one leaf range, folded with one range proof.
    assert f"{lake.receipts['genuine']}: {lake.rows_part()}: fold to the root {genuine['root'][:8]}… over 25 leaves\n" in proc.stdout
    assert f"{lake.receipts['genuine-batch-1']}: rows [0, 1): fold to the root" in proc.stdout
    # receipt/1 (still read): one inclusion path per row.
    assert f"{lake.receipts['genuine-v1']}: row 0 (leaf {genuine['range']['start']}): folds to the root" in proc.stdout
    assert f"equal BatchAnchor {batch_anchor} on chain 31337 for dataset instructions (id 0x7d1cc26d…)" in proc.stdout
    assert "folds to rootAt(instructions, 0) = 0x" in proc.stdout and f"in RewardDistributor {distributor}" in proc.stdout
    assert "reward: cumulative 200000000000000000000 base units folds to rootAt(instructions, 0)" in proc.stdout
    assert "not checked" not in proc.stdout and "?   " not in proc.stdout
    assert f"Verified: 1 row of {ALICE} in instructions batch 1, against" in proc.stdout and "1 rows" not in proc.stdout
    assert f"Verified: {len(genuine['rows'])} rows of {ALICE} in instructions batch 0, against" in proc.stdout
    assert "batch amount 200000000000000000000 = cumulative 200000000000000000000 (batch 0" in proc.stdout
    assert "− previous 200000000000000000000 (previous folds to rootAt(instructions, 0)" in proc.stdout, proc.stdout
    # Flags name the same trust anchors without a deployments file.
    proc = verify_cli(lake.receipts["genuine"], "--rpc", lake.rpc, "--dataset", "instructions",
                      "--contract", batch_anchor, "--distributor", distributor)
    assert proc.returncode == 0, proc.stderr


FORGED = {  # case: (the part the verdict names, a line on stderr); {rows} is "rows [start, end)" of Alice's range
    "edited": ("{rows} failed", "{path}: {rows}: fold to root"),
    "proof-flipped": ("{rows} failed", "{path}: {rows}: fold to root"),
    "duplicate-rows": ("{rows} failed", "{path}: {rows}: fold to root"),
    "range-shifted": ("{shifted} failed", "{path}: {shifted}: fold to root"),
    "tree-size-changed": ("batch failed", "batch: tree size 26 differs from the anchored 25 in BatchAnchor"),
    "other-contributors-rows": ("row 0 (leaf {bob}), row 1 (leaf {bob1})",
                                f"row 0 (leaf {{bob}}): the record names contributor \"{BOB}\", the receipt is for {ALICE}"),
    "forged": ("anchor, ", "the receipt names contract {attacker}, you trust BatchAnchor"),
    "relabelled": ("dataset", "the receipt says dataset \"preferences\", you are verifying \"instructions\""),
    "inflated": ("reward", "cumulative amount 2000000000000000000000 with its proof folds to"),
    "batch-1-amount-inflated": ("batch amount", "is not cumulative"),
    "batch-0-amount-changed": ("batch amount", "is not the cumulative 200000000000000000000 of batch 0"),
    "edited-v1": ("row 0 (leaf {leaf})", "{path}: row 0 (leaf {leaf}): folds to root"),
    "duplicate-rows-v1": ("rows", "FAIL {path}: rows: the rows repeat leaf index {leaf} (5 times)"),
}
# Refused before anything is checked (exit 2): the proof or the rows do not fit the range.
MALFORMED = {
    "row-dropped": "rows holds {n_1} rows, the range [{start}, {end}) holds {n} leaves",
    "proof-extra-hash": "proof has {p1} hashes, the proof of [{start}, {end}) in a tree of 25 leaves has {p}",
}


def forged_words(lake: Lake, case: str, text: str) -> str:
    genuine, bob = lake.data("genuine"), lake.data("other-contributors-rows")
    start, end, n, p = genuine["range"]["start"], genuine["range"]["end"], len(genuine["rows"]), len(genuine["proof"])
    return text.format(attacker=lake.attacker_contract, path=lake.receipts[case], leaf=start, rows=lake.rows_part(),
                       shifted=lake.rows_part(shift=1), bob=bob["range"]["start"], bob1=bob["range"]["start"] + 1,
                       start=start, end=end, n=n, n_1=n - 1, p=p, p1=p + 1)


def test_the_node_cli_verifies_a_batchs_published_receipts_file(lake: Lake) -> None:
    published = lake.folder / "lake" / "receipts" / "instructions" / "000000"
    [name] = json.loads((published / "index.json").read_text())["files"]  # a small batch: one file
    receipts = published / f"{name}.jsonl.gz"
    proc = verify_cli(receipts, "--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions")
    assert proc.returncode == 0 and proc.stdout.count("OK ") == 5 and f"OK {receipts} line 5:" in proc.stdout, proc.stderr
    # What the lake holds is gzip, a member a receipt: a file that is not, has anything after its last
    # member (zlib would stop at a zero byte and say nothing of a forged member after it), or unpacks
    # past what the runtime can hold, is bad input to both verifiers.
    forged = packed(json.dumps(json.loads(lake.receipts["genuine"].read_text()) | {"seq": 7}).encode())
    trust = ["--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions"]
    for name, data, problem in (
            ("cut.jsonl.gz", receipts.read_bytes()[:-1], "is not gzip (Z_BUF_ERROR)"),
            ("zeros.jsonl.gz", receipts.read_bytes() + b"\0" * 64, "holds bytes after its last gzip member"),
            ("forged.jsonl.gz", receipts.read_bytes() + b"\0" + forged, "holds bytes after its last gzip member"),
            ("bomb.jsonl.gz", packed(b" " * (300 << 20)), "unpacks to more than 268435456 bytes")):
        (lake.folder / name).write_bytes(data)
        proc = verify_cli(lake.folder / name, *trust)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"{name}: {problem}" in proc.stderr, proc.stderr
        if name != "bomb.jsonl.gz":  # anchorlake verify reads a receipt at a time: those before the damage are shown
            python = cli(lake.env, "verify", str(lake.folder / name), *trust, check=False)
            assert python.returncode == 2 and python.stderr.count("\n") == 1, (python.stdout, python.stderr)
            assert python.stdout.count("OK ") <= 5 and "line 6" not in python.stdout, python.stdout



@pytest.mark.parametrize("case", sorted(FORGED))
def test_the_node_cli_names_the_failing_part_of_each_forged_receipt(lake: Lake, case: str) -> None:
    part, detail = (forged_words(lake, case, text) for text in FORGED[case])
    proc = verify_cli(lake.receipts[case], "--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions")
    assert proc.returncode == 1, proc.stderr
    assert "OK " not in proc.stdout and "Traceback" not in proc.stderr and "    at " not in proc.stderr
    assert f"Not verified: {part}" in proc.stdout, proc.stdout
    assert detail in proc.stderr, proc.stderr
    assert all(line.startswith("FAIL ") for line in proc.stderr.splitlines())


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_the_node_cli_refuses_a_receipt_whose_rows_or_proof_do_not_fit_its_range(lake: Lake, case: str) -> None:
    proc = verify_cli(lake.receipts[case], "--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions")
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr == f"error: {lake.receipts[case]}: {forged_words(lake, case, MALFORMED[case])}\n"


def test_the_node_cli_agrees_with_anchorlake_verify_on_every_receipt(lake: Lake) -> None:
    trust = ["--deployment", str(lake.deployment), "--dataset", "instructions"]
    # `anchorlake verify` refuses a receipt/1 listing a leaf twice as malformed (exit 2, for the
    # whole command); the node CLI fails its rows part (exit 1). Neither verifies it. Both refuse
    # a receipt/2 whose rows or proof do not fit its range (exit 2).
    refused = {"duplicate-rows-v1": "listed more than once", "row-dropped": "rows", "proof-extra-hash": "proof"}
    names = sorted(set(lake.receipts) - set(refused))
    python = cli(lake.env, "--json", "--quiet", "verify", *(str(lake.receipts[n]) for n in names), *trust, check=False)
    assert python.stdout, python.stderr
    python_ok = {name: r["ok"] for name, r in zip(names, json.loads(python.stdout)["receipts"], strict=True)}
    for name, words in refused.items():
        proc = cli(lake.env, "verify", str(lake.receipts[name]), *trust, check=False)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        python_ok[name] = False
    javascript = {name: verify_cli(lake.receipts[name], "--rpc", lake.rpc, *trust).returncode for name in sorted(lake.receipts)}
    assert {name: code == 0 for name, code in javascript.items()} == python_ok
    assert [name for name, code in javascript.items() if code == 0] == [
        "batch-1-previous-deleted", "batch-1-without-previous", "genuine", "genuine-batch-1", "genuine-v1"]
    assert [name for name, code in javascript.items() if code == 2] == ["proof-extra-hash", "row-dropped"]


def test_the_node_cli_says_a_batch_amount_without_an_earlier_cumulative_amount_is_not_checked(lake: Lake) -> None:
    trust = ["--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions"]
    for case in ("batch-1-previous-deleted", "batch-1-without-previous"):
        proc = verify_cli(lake.receipts[case], *trust)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        path = lake.receipts[case]
        assert f"  ?    {path}: batch amount: {BATCH_AMOUNT_NOT_CHECKED}\n" in proc.stdout, proc.stdout
        verdict = next(line for line in proc.stdout.splitlines() if line.startswith("OK "))
        assert verdict.startswith(f"OK {path}: Verified: 1 row of {ALICE} in instructions batch 1 (batch amount not checked), against ")
        assert proc.stdout.count(": batch amount: ") == 1 and "taken as 0" not in proc.stdout  # no pass line for it
        assert "reward: cumulative " in proc.stdout  # the cumulative amount is still checked


def test_the_node_cli_rejects_rows_that_repeat_a_leaf_online_and_offline(lake: Lake) -> None:
    # receipt/1: the rows name their leaves, and naming one five times is refused as such.
    data = lake.data("duplicate-rows-v1")
    proc = verify_cli(lake.receipts["duplicate-rows-v1"], "--root", data["root"], "--tree-size", str(data["tree_size"]))
    assert proc.returncode == 1 and "NOT VERIFIED" in proc.stdout and "Not verified: rows failed" in proc.stdout
    assert f"rows: the rows repeat leaf index {data['rows'][0]['leaf_index']} (5 times)" in proc.stderr, proc.stderr
    assert "Verified" not in proc.stdout.replace("Not verified", "")
    # receipt/2: row n is leaf start + n, so a repeated row is a different leaf that does not fold.
    data = lake.data("duplicate-rows")
    proc = verify_cli(lake.receipts["duplicate-rows"], "--root", data["root"], "--tree-size", str(data["tree_size"]))
    assert proc.returncode == 1 and f"Not verified: {lake.rows_part()} failed" in proc.stdout, proc.stdout
    assert f"{lake.rows_part()}: fold to root" in proc.stderr and "Verified" not in proc.stdout.replace("Not verified", "")


def test_the_node_cli_trusts_what_the_user_names_not_what_the_receipt_names(lake: Lake) -> None:
    # The forged batch really is anchored in the attacker's contract: trusting it is the user's choice.
    proc = verify_cli(lake.receipts["forged"], "--rpc", lake.rpc, "--dataset", "instructions",
                      "--contract", lake.attacker_contract)
    assert proc.returncode == 0, proc.stderr
    # The relabelled receipt checked as "preferences": that dataset's id is not the receipt's.
    proc = verify_cli(lake.receipts["relabelled"], "--rpc", lake.rpc, "--deployment", lake.deployment,
                      "--dataset", "preferences")
    assert proc.returncode == 1 and "anchor: the receipt names dataset id 0x7d1c" in proc.stderr, proc.stderr
    # Without the user's RewardDistributor the reward is not checked, and the receipt is not verified.
    proc = verify_cli(lake.receipts["inflated"], "--rpc", lake.rpc, "--dataset", "instructions",
                      "--contract", lake.addresses["BatchAnchor"])
    assert proc.returncode == 1 and "reward: not checked" in proc.stderr and "OK " not in proc.stdout


def test_the_node_cli_checks_nothing_without_trust_anchors_and_says_so(lake: Lake) -> None:
    genuine = lake.receipts["genuine"]
    proc = verify_cli(genuine)
    assert proc.returncode == 2 and "not verified: nothing to check against" in proc.stderr
    assert "verified" not in proc.stdout.lower()
    proc = verify_cli(genuine, "--deployment", lake.deployment, "--dataset", "instructions")  # no RPC, no root
    assert proc.returncode == 2 and "not verified: nothing to check against" in proc.stderr
    proc = verify_cli(genuine, "--root", json.loads(lake.text("genuine"))["root"])
    assert proc.returncode == 2 and "a root needs its tree size" in proc.stderr
    proc = verify_cli(genuine, "--rpc", lake.rpc)
    assert proc.returncode == 2 and "the dataset name and the BatchAnchor address" in proc.stderr
    assert CLI_TRUST_HINT in proc.stderr and "type them" not in proc.stderr
    other_chain = lake.folder / "deployment-chain-1.json"
    other_chain.write_text(json.dumps(lake.addresses | {"chain_id": 1}))
    proc = verify_cli(genuine, "--rpc", lake.rpc, "--deployment", other_chain, "--dataset", "instructions")
    assert proc.returncode == 2 and "is for chain 1, the RPC at http://127.0.0.1:" in proc.stderr, proc.stderr
    proc = verify_cli(genuine, "--rpc", lake.rpc, "--dataset", "instructions", "--contract", "0x1234")
    assert proc.returncode == 2 and "is not an address" in proc.stderr
    proc = verify_cli(lake.folder / "missing.json", "--root", "00" * 32, "--tree-size", "1")
    assert proc.returncode == 2 and "cannot be read" in proc.stderr and "    at " not in proc.stderr


def test_the_node_cli_verifies_offline_against_a_root_and_tree_size_the_user_gives(lake: Lake) -> None:
    data = json.loads(lake.text("genuine"))
    proc = verify_cli(lake.receipts["genuine"], "--root", data["root"], "--tree-size", str(data["tree_size"]))
    assert proc.returncode == 0 and "reward: not checked offline" in proc.stdout, proc.stderr
    # Offline nothing says which dataset or batch the root is of: the verdict does not claim them.
    rows = len(data["rows"])
    assert rows > 1 and (f"OK {lake.receipts['genuine']}: Verified offline: {rows} rows of {ALICE} fold "
                         f"{NOT_CHECKED_OFFLINE}, against the root and tree size {data['tree_size']} you gave") in proc.stdout
    assert "instructions" not in proc.stdout and "batch 0" not in proc.stdout
    forged = json.loads(lake.text("forged"))  # one row, a tree of one leaf
    proc = verify_cli(lake.receipts["forged"], "--root", forged["root"], "--tree-size", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"Verified offline: 1 row of {ALICE} folds {NOT_CHECKED_OFFLINE}" in proc.stdout
    assert "over 1 leaf\n" in proc.stdout and "1 rows" not in proc.stdout
    proc = verify_cli(lake.receipts["genuine"], "--root", data["root"], "--tree-size", str(data["tree_size"] + 1))
    assert proc.returncode == 1 and f"tree size {data['tree_size']} is not the given tree size" in proc.stderr
    # A receipt naming one leaf more still folds (a proof alone does not bind the tree size): the
    # tree size the user gives is what catches it.
    proc = verify_cli(lake.receipts["tree-size-changed"], "--root", data["root"], "--tree-size", str(data["tree_size"]))
    assert proc.returncode == 1 and f"{lake.rows_part()}: fold to the root" in proc.stdout, proc.stdout
    assert f"root (offline): tree size {data['tree_size'] + 1} is not the given tree size {data['tree_size']}" in proc.stderr


def test_the_node_cli_prints_each_error_on_one_line_in_its_own_words(lake: Lake, tmp_path: Path) -> None:
    def one_error(proc: subprocess.CompletedProcess[str]) -> str:
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.endswith("\n"), repr(proc.stderr)
        return proc.stderr.strip()

    not_json = tmp_path / "not-json.json"
    not_json.write_text("hello\nworld\n")  # Node's JSON.parse quotes the text, newline included
    error = one_error(verify_cli(not_json, "--root", "00" * 32, "--tree-size", "1"))
    assert error.startswith(f"error: {not_json}: not JSON (") and "hello world" in error, error
    error = one_error(verify_cli(lake.receipts["genuine"], "--bogus"))
    assert error.startswith("error: unknown option --bogus; usage: node web/verify-cli.mjs"), error
    # No trust anchors: the CLI says which flags to give, not the page's "type them".
    for args in ([], ["--deployment", lake.deployment, "--dataset", "instructions"]):
        error = one_error(verify_cli(lake.receipts["genuine"], *args))
        assert error == f"not verified: nothing to check against: {CLI_TRUST_HINT}", error
    # Without the user's RewardDistributor the CLI names its flags too.
    proc = verify_cli(lake.receipts["genuine"], "--rpc", lake.rpc, "--dataset", "instructions",
                      "--contract", lake.addresses["BatchAnchor"])
    assert proc.returncode == 1 and "reward: not checked: give the RewardDistributor you trust: --distributor ADDR" in proc.stderr
    assert "load your deployments file" not in proc.stderr
    # Counts of one are singular in every message.
    bad_proof = lake.data("forged") | {"proof": ["00" * 32]}
    (tmp_path / "bad-proof.json").write_text(json.dumps(bad_proof))
    error = one_error(verify_cli(tmp_path / "bad-proof.json", "--root", bad_proof["root"], "--tree-size", "1"))
    assert error.endswith("proof has 1 hash, the proof of [0, 1) in a tree of 1 leaf has 0"), error
    bad_path = lake.data("genuine-v1")
    bad_path["rows"] = [bad_path["rows"][0] | {"leaf_index": 0, "path": ["00" * 32]}]
    (tmp_path / "bad-path.json").write_text(json.dumps(bad_path | {"tree_size": 1}))
    error = one_error(verify_cli(tmp_path / "bad-path.json", "--root", bad_path["root"], "--tree-size", "1"))
    assert error.endswith("rows[0].path has 1 hash, a proof in this tree has 0"), error
    # A receipt/2's range names the field and the tree size it must fit.
    (tmp_path / "bad-range.json").write_text(json.dumps(lake.data("genuine") | {"range": {"start": 3, "end": 3}}))
    error = one_error(verify_cli(tmp_path / "bad-range.json", "--root", bad_path["root"], "--tree-size", "25"))
    assert error.endswith("bad-range.json: range must be {start, end} with 0 <= start < end <= tree size 25"), error
    (tmp_path / "other-format.json").write_text(json.dumps(lake.data("genuine") | {"format": "anchorlake.receipt/3"}))
    error = one_error(verify_cli(tmp_path / "other-format.json", "--root", bad_path["root"], "--tree-size", "25"))
    assert error.endswith('format: expected anchorlake.receipt/2 or anchorlake.receipt/1, got "anchorlake.receipt/3"'), error


def test_the_node_cli_shows_reward_amounts_in_base_units_not_in_the_receipts_unit(lake: Lake, tmp_path: Path) -> None:
    data = json.loads(lake.text("genuine"))
    data["reward"]["unit"] = "ETH (wei)"  # the receipt's own word: nothing checks it
    (tmp_path / "unit.json").write_text(json.dumps(data))
    proc = verify_cli(tmp_path / "unit.json", "--rpc", lake.rpc, "--deployment", lake.deployment, "--dataset", "instructions")
    assert proc.returncode == 0, proc.stderr
    assert f"reward: cumulative {data['reward']['cumulative_amount']} base units folds to rootAt(" in proc.stdout
    assert "ETH" not in proc.stdout and "wei" not in proc.stdout


def test_the_node_cli_never_echoes_the_rpc_urls_secrets_when_the_chain_cannot_be_asked(lake: Lake, web_url: str) -> None:
    trust = ["--dataset", "instructions", "--contract", lake.addresses["BatchAnchor"]]
    port = free_port()
    proc = verify_cli(lake.receipts["genuine"], "--rpc", f"http://user:hunter2-secret@127.0.0.1:{port}{SECRET_PATH}", *trust)
    assert proc.returncode == 3, proc.stderr
    assert f"cannot reach the chain RPC at http://127.0.0.1:{port}: connection refused" in proc.stderr
    assert "SECRET" not in proc.stderr + proc.stdout and "hunter2" not in proc.stderr + proc.stdout
    # A server that is no JSON-RPC node (the page's own web server answers POST with 501).
    proc = verify_cli(lake.receipts["genuine"], "--rpc", f"{web_url}{SECRET_PATH}", *trust)
    assert proc.returncode == 3 and f"the chain RPC at {web_url} answered HTTP 501" in proc.stderr, proc.stderr
    assert "SECRET" not in proc.stderr + proc.stdout and "    at " not in proc.stderr


def test_the_node_cli_survives_a_reader_that_closes_the_pipe(lake: Lake) -> None:
    data = json.loads(lake.text("genuine"))
    command = (f"'{node()}' '{VERIFY_CLI}' '{lake.receipts['genuine']}' --root {data['root']} "
               f"--tree-size {data['tree_size']} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "0" and proc.stderr == "", proc.stderr


# --- the page, in a real Chromium ---------------------------------------------------------------

@pytest.fixture(scope="module")
def page(lake: Lake, web_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every page case in one Chromium run: what the page shows after Verify, per case."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    folder = tmp_path_factory.mktemp("page-driver")
    trusted = {"rpc": lake.rpc, "dataset": "instructions"}
    genuine = json.loads(lake.text("genuine"))
    other_chain = folder / "deployment-chain-1.json"
    other_chain.write_text(json.dumps(lake.addresses | {"chain_id": 1}))
    cases = [{"name": name, "deployment": str(lake.deployment), "fields": trusted, "receipt": lake.text(name)}
             for name in ("genuine", "genuine-batch-1", "genuine-v1", *PAGE_FORGED, *MALFORMED, "batch-1-previous-deleted")]
    cases += [
        {"name": "empty-trust", "deployment": None, "fields": {}, "receipt": lake.text("genuine")},
        {"name": "offline", "deployment": None, "receiptFile": str(lake.receipts["genuine"]),
         "fields": {"root": genuine["root"], "tree-size": genuine["tree_size"]}},
        {"name": "no-distributor", "deployment": str(lake.deployment), "fields": trusted | {"distributor": ""},
         "receipt": lake.text("genuine")},
        {"name": "other-chain", "deployment": str(other_chain), "fields": trusted, "receipt": lake.text("genuine")},
        {"name": "unreachable", "deployment": str(lake.deployment), "receipt": lake.text("genuine"),
         "fields": trusted | {"rpc": f"http://127.0.0.1:{free_port()}{SECRET_PATH}"}},
    ]
    spec = folder / "cases.json"
    spec.write_text(json.dumps({"url": f"{web_url}/verify.html", "chromium": CHROMIUM, "shots": str(SHOTS), "cases": cases}))
    proc = subprocess.run([node(), str(REPO / "tests" / "page" / "drive.mjs"), str(spec)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, f"the Chromium driver failed:\n{proc.stderr}"
    results = json.loads(proc.stdout)
    unexpected = {name: r["errors"] for name, r in results.items() if r["errors"] and name != "unreachable"}
    assert not unexpected, unexpected
    return dict(results)


def test_the_page_verifies_genuine_receipts_against_the_deployments_file_the_user_loads(page: dict, lake: Lake) -> None:
    first_part = {"genuine": lake.rows_part(), "genuine-batch-1": "rows [0, 1)",
                  "genuine-v1": f"row 0 (leaf {lake.data('genuine')['range']['start']})"}
    for name, part in first_part.items():
        shown = page[name]
        assert shown["outcome"] == "verified" and shown["verdict"].startswith("Verified: "), shown
        assert shown["fields"]["batch-anchor"] == lake.addresses["BatchAnchor"].lower()  # from the file, not the receipt
        assert shown["fields"]["chain-id"] == "31337" and shown["deploymentStatus"].startswith("loaded ")
        assert all(c["status"] in ("pass", "note") for c in shown["checks"])
        parts = [c["part"] for c in shown["checks"]]
        assert parts[0] == part and {"batch", "reward", "batch amount"} <= set(parts), parts
    genuine = lake.data("genuine")
    assert page["genuine"]["checks"][0]["text"] == f"fold to the root {genuine['root'][:8]}… over 25 leaves"
    # What the receipt says it holds is shown as the receipt's words, beside what was checked.
    assert page["genuine"]["summary"] == (f"the receipt (anchorlake.receipt/2) shows {lake.rows_part()} of a tree of "
                                          "25 leaves in instructions batch 0")
    assert page["genuine-batch-1"]["summary"].endswith("shows rows [0, 1) of a tree of 1 leaf in instructions batch 1")
    assert page["genuine-v1"]["summary"].startswith(f"the receipt (anchorlake.receipt/1) shows {len(genuine['rows'])} rows at leaves ")
    texts = " | ".join(c["text"] for c in page["genuine-batch-1"]["checks"])
    assert "− previous 200000000000000000000 (previous folds to rootAt(instructions, 0)" in texts
    reward = genuine["reward"]
    texts = " | ".join(c["text"] for c in page["genuine"]["checks"])
    assert f"cumulative {reward['cumulative_amount']} base units folds to rootAt(instructions, 0)" in texts
    assert str(reward["unit"]) not in texts  # the receipt's unit is not shown as if checked


def test_the_page_says_a_batch_amount_without_an_earlier_cumulative_amount_is_not_checked(page: dict) -> None:
    shown = page["batch-1-previous-deleted"]
    assert shown["outcome"] == "verified", shown
    assert shown["verdict"] == f"Verified: 1 row of {ALICE} in instructions batch 1 (batch amount not checked)"
    assert {"status": "skipped", "part": "batch amount", "text": BATCH_AMOUNT_NOT_CHECKED} in shown["checks"]
    assert [c["part"] for c in shown["checks"] if c["status"] not in ("pass", "note")] == ["batch amount"]


PAGE_FORGED = ("edited", "proof-flipped", "range-shifted", "tree-size-changed", "other-contributors-rows", "duplicate-rows",
               "forged", "relabelled", "inflated", "edited-v1", "duplicate-rows-v1")


@pytest.mark.parametrize("case", PAGE_FORGED)
def test_the_page_names_the_failing_part_of_each_forged_receipt(page: dict, lake: Lake, case: str) -> None:
    part, detail = (forged_words(lake, case, text) for text in FORGED[case])
    shown = page[case]
    assert shown["outcome"] == "failed" and shown["verdict"].startswith(f"Not verified: {part}"), shown["verdict"]
    failed = [c for c in shown["checks"] if c["status"] == "fail"]
    # The verdict names the failing parts in the order of their lines, and a line says what differed.
    assert failed and shown["verdict"].startswith(f"Not verified: {failed[0]['part']}"), shown
    detail = detail.removeprefix("FAIL ").removeprefix(f"{lake.receipts[case]}: ")  # the CLI's line, less its prefix
    assert any(detail in f"{c['part']}: {c['text']}" for c in failed), (detail, failed)
    if case == "forged":
        assert "batch" in shown["verdict"]  # the root the attacker anchored is not in the user's BatchAnchor
    if case == "tree-size-changed":  # the rows still fold: the proof alone does not bind the tree size
        assert {"status": "pass", "part": lake.rows_part(), "text": "fold to the root "
                f"{lake.data('genuine')['root'][:8]}… over 26 leaves"} in shown["checks"], shown["checks"]
    if case == "duplicate-rows-v1":
        assert shown["verdict"] == "Not verified: rows failed"
        assert any(c["part"] == "rows" and "(5 times): each row of a receipt must be a different leaf" in c["text"]
                   for c in shown["checks"])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_the_page_refuses_a_receipt_whose_rows_or_proof_do_not_fit_its_range(page: dict, lake: Lake, case: str) -> None:
    shown = page[case]
    assert shown["outcome"] == "error" and shown["checks"] == [], shown
    assert shown["verdict"] == f"Not verified: the receipt: {forged_words(lake, case, MALFORMED[case])}"


def test_the_page_checks_nothing_without_trust_anchors_and_says_so(page: dict) -> None:
    shown = page["empty-trust"]
    assert shown["verdict"] == "not verified: nothing to check against"
    assert all(value == "" for value in shown["fields"].values())  # nothing was filled in from the receipt
    assert page["no-distributor"]["verdict"] == "Not verified: reward not checked"
    assert page["other-chain"]["verdict"].startswith("Not verified: the deployments file deployment-chain-1.json is for chain 1")


def test_the_page_verifies_offline_and_hides_the_rpc_urls_secrets(page: dict) -> None:
    rows = page["offline"]["verdict"].split(" ")[2]
    assert page["offline"]["verdict"] == f"Verified offline: {rows} rows of {ALICE} fold {NOT_CHECKED_OFFLINE}"
    assert page["offline"]["against"] == "checked against the root and tree size 25 you gave"
    unreachable = page["unreachable"]
    assert unreachable["verdict"].startswith("Not verified: cannot reach the chain RPC at http://127.0.0.1:")
    assert "SECRET" not in unreachable["verdict"] + json.dumps(unreachable["checks"]) + json.dumps(unreachable["errors"])


def test_the_page_leaves_a_screenshot_of_every_case(page: dict) -> None:
    for name in page:
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000, name


# --- the page's hashing against independent implementations -------------------------------------

def test_the_pages_keccak_and_reward_leaves_match_eth_hash_and_the_python_rewards_tree(tmp_path: Path) -> None:
    """Keccak-256 (not SHA3-256) over every length across two rate blocks (136 bytes), and OpenZeppelin
    reward leaves and proofs for amounts past 2^53."""
    from eth_hash.auto import keccak

    from pipeline.core.rewards import RewardsTree, reward_leaf

    messages = [bytes((i * 7 + n) % 256 for i in range(n)) for n in range(0, 300)]
    values = [(f"0x{i:040x}", 10**21 * i + 12345) for i in range(1, 6)] + [("0x" + "f" * 40, 2**256 - 1)]
    tree = RewardsTree.build(values)
    source = tmp_path / "input.json"
    source.write_text(json.dumps({
        "keccak": [m.hex() for m in messages],
        "leaves": [[a, str(v)] for a, v in values],
        "proofs": [{"account": a, "amount": str(v), "proof": ["0x" + p.hex() for p in tree.proof(i)]}
                   for i, (a, v) in enumerate(values)],
        "datasets": ["instructions", "préférences"],
    }))
    proc = subprocess.run([node(), str(REPO / "tests" / "page" / "known_answers.mjs"), str(source)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # keccak256("") — reproduce: python -c "from eth_hash.auto import keccak; print(keccak(b'').hex())"
    assert out["keccak"][0] == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert out["keccak"] == [bytes(keccak(m)).hex() for m in messages]
    assert out["leaves"] == [reward_leaf(a, v).hex() for a, v in values]
    assert out["roots"] == [tree.root.hex()] * len(values)
    assert out["datasets"] == ["0x" + bytes(keccak(n.encode())).hex() for n in ("instructions", "préférences")]


def test_a_batch_with_no_accepted_row_publishes_nothing_and_later_receipts_still_verify(anvil: Anvil,
                                                                                        tmp_path: Path) -> None:
    """SPEC §13.8: batch 1 accepts no row (every record lacks consent): it is anchored, publishes no
    rewards root and pays nothing. Alice's batch-2 receipt names her cumulative amount of batch 0
    as the earlier one; both verifiers check that nothing was published between and pass it."""
    from anchoring.chain import Chain
    from anchoring.distributor import published_root
    from pipeline.datasets import dataset_id

    env = base_env(tmp_path) | {"ANCHORLAKE_LAKE": (tmp_path / "lake").as_uri(), "ANCHORLAKE_RPC_URL": anvil.url}
    cli(env, "up")
    contribute_one(env, tmp_path, "What is a rewards root?", ALICE)
    cli(env, "run", "--dataset", "instructions")
    refused = tmp_path / "no-consent.jsonl"
    refused.write_text(json.dumps({"prompt": "Keep this private.", "response": "No.", "language": "en", "consent": False,
                                   "created_at": "2026-11-20T08:00:00Z", "contributor": ALICE}) + "\n")
    cli(env, "contribute", "--dataset", "instructions", str(refused))
    empty = cli_json(env, "run", "--dataset", "instructions")["committed"][0]
    assert empty["seq"] == 1 and empty["counts"]["accepted"] == 0 and empty["counts"]["quarantined"] == 1
    contribute_one(env, tmp_path, "Why does a claim pay the difference?", ALICE)
    assert [c["seq"] for c in cli_json(env, "run", "--dataset", "instructions")["committed"]] == [2]
    assert [b["anchored"] for b in cli_json(env, "status", "--dataset", "instructions")["batches"]] == [True] * 3

    trust = trust_args(env, tmp_path)
    addresses = json.loads(Path(trust[1]).read_text())
    chain = Chain(anvil.url)
    roots = [published_root(chain, addresses["RewardDistributor"], dataset_id("instructions"), s) for s in range(3)]
    assert roots[0] is not None and roots[1] is None and roots[2] is not None

    receipt = tmp_path / "alice-2.json"
    cli(env, "receipt", "--dataset", "instructions", "--batch", "2", "--contributor", ALICE, "-o", str(receipt))
    reward = json.loads(receipt.read_text())["reward"]
    assert reward["previous"]["seq"] == 0 and int(reward["amount"]) == 10**21
    python = cli(env, "verify", str(receipt), *trust)
    assert "rootAt(0), no rewards published between" in python.stdout, python.stdout
    javascript = verify_cli(receipt, "--rpc", anvil.url, *trust)
    assert javascript.returncode == 0 and "batch amount" in javascript.stdout, javascript.stdout + javascript.stderr

    # A batch-3 receipt that names batch 0's cumulative amount as the earlier one (a genuine proof)
    # to show a larger batch amount: batch 2 published rewards between, and both verifiers say so.
    contribute_one(env, tmp_path, "What does a later batch add?", ALICE)
    assert [c["seq"] for c in cli_json(env, "run", "--dataset", "instructions")["committed"]] == [3]
    third = tmp_path / "alice-3.json"
    cli(env, "receipt", "--dataset", "instructions", "--batch", "3", "--contributor", ALICE, "-o", str(third))
    forged = json.loads(third.read_text())
    forged["reward"] |= {"previous": reward["previous"],
                         "amount": str(int(forged["reward"]["cumulative_amount"]) - int(reward["previous"]["cumulative_amount"]))}
    third.write_text(json.dumps(forged))
    python = cli(env, "verify", str(third), *trust, check=False)
    assert python.returncode == 1 and "but batch 2 published rewards after it" in python.stdout + python.stderr
    javascript = verify_cli(third, "--rpc", anvil.url, *trust)
    assert javascript.returncode == 1 and "but batch 2 published rewards after it" in javascript.stderr, javascript.stderr


def test_the_page_claims_with_an_injected_wallet_or_shows_the_exact_calldata(lake: Lake, web_url: str,
                                                                            tmp_path: Path) -> None:
    """SPEC §13.6 on the page: a verified receipt of the latest published batch offers its claim:
    without a wallet, the exact calldata (the one web3.py encodes); with an injected EIP-1193
    wallet (an outsider's account on anvil), the claim is sent and the contributor is paid; a
    receipt of an earlier batch says claims check the latest root; a second claim has nothing left."""
    from anchoring.chain import Chain
    from anchoring.distributor import claimed, token_balance
    from pipeline.datasets import dataset_id

    chain = Chain(lake.rpc)
    outsider = chain.w3.eth.account.from_key(OUTSIDER_KEY).address
    trusted = {"rpc": lake.rpc, "dataset": "instructions"}
    latest = lake.text("genuine-batch-1")
    wallet = {"rpc": lake.rpc, "account": outsider}
    cases = [{"name": "claim-calldata", "deployment": str(lake.deployment), "fields": trusted, "receipt": latest},
             {"name": "claim-earlier-batch", "deployment": str(lake.deployment), "fields": trusted,
              "receipt": lake.text("genuine"), "wallet": wallet},
             {"name": "claim-wallet", "deployment": str(lake.deployment), "fields": trusted, "receipt": latest,
              "wallet": wallet},
             {"name": "claim-again", "deployment": str(lake.deployment), "fields": trusted, "receipt": latest,
              "wallet": wallet}]
    spec = tmp_path / "claims.json"
    spec.write_text(json.dumps({"url": f"{web_url}/verify.html", "chromium": CHROMIUM, "shots": str(SHOTS), "cases": cases}))
    distributor = lake.addresses["RewardDistributor"]
    reward = json.loads(latest)["reward"]
    before = token_balance(chain, lake.addresses["RewardToken"], ALICE)
    proc = subprocess.run([node(), str(REPO / "tests" / "page" / "drive.mjs"), str(spec)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, f"the Chromium driver failed:\n{proc.stderr}"
    shown = {name: r["claim"] for name, r in json.loads(proc.stdout).items()}
    assert all(not r["errors"] for r in json.loads(proc.stdout).values())

    expected = chain.contract("RewardDistributor", distributor).encode_abi("claim", args=[
        dataset_id("instructions"), chain.w3.to_checksum_address(ALICE), int(reward["cumulative_amount"]),
        [bytes.fromhex(p[2:]) for p in reward["proof"]]])
    assert shown["claim-calldata"]["shown"] and not shown["claim-calldata"]["wallet"]
    assert f"data: {expected}" in shown["claim-calldata"]["calldata"], shown["claim-calldata"]
    assert f"to:   {distributor.lower()}" in shown["claim-calldata"]["calldata"]
    assert "a later batch has published rewards since" in shown["claim-earlier-batch"]["note"]
    assert not shown["claim-earlier-batch"]["wallet"]
    assert shown["claim-wallet"]["status"].lower().startswith(f"claim sent from {outsider.lower()}"), shown["claim-wallet"]
    assert token_balance(chain, lake.addresses["RewardToken"], ALICE) - before == int(reward["cumulative_amount"])
    assert claimed(chain, distributor, dataset_id("instructions"), ALICE) == int(reward["cumulative_amount"])
    assert shown["claim-again"]["note"].startswith(f"nothing to claim: {ALICE} has been paid"), shown["claim-again"]
