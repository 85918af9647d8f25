"""`anchorlake`: the command line (SPEC §10).

Exit codes: 0 done; 1 a check failed; 2 bad usage or bad input; 3 a service cannot be reached.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pipeline import config, layout
from pipeline import manifest as manifests
from pipeline.errors import AnchorlakeError, BadInput, CheckFailed, NotFound

EXIT_OK, EXIT_CHECK, EXIT_USAGE, EXIT_SERVICE = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"anchorlake: {message} (see `anchorlake --help`)\n")
        raise SystemExit(EXIT_USAGE)


class Output:
    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def progress(self, message: str) -> None:
        if not self.quiet:
            print(f"... {message}", file=sys.stderr, flush=True)

    def line(self, message: str) -> None:
        if not self.as_json:
            print(message, flush=True)

    def result(self, data: Any) -> None:
        if self.as_json:
            print(json.dumps(data, indent=1, default=str))


# --- commands -----------------------------------------------------------------------------


def _bring_up(out: Output) -> tuple[config.Settings, dict[str, Any], bool]:
    """Start the embedded devnet unless ANCHORLAKE_RPC_URL names a chain; deploy what is missing.

    Returns (settings, deployment, whether a devnet was started now)."""
    from anchoring.chain import Chain, ensure_deployment
    from pipeline import services, stages

    started = False
    home = config.load().home
    if not config.rpc_url_is_external():
        url, started = services.devnet_up(home)
        out.progress(("started" if started else "reusing") + f" the local devnet at {url}")
    try:
        settings = config.load()  # now with the devnet's URL
        chain = Chain(settings.rpc_url, settings.anchorer_key, settings.confirmations)  # type: ignore[arg-type]
        deployment = ensure_deployment(chain, stages.lake_for(settings), settings.contracts.get("RewardToken"))
    except BaseException:
        if started:  # leave no process behind on failure
            services.devnet_down(home)
        raise
    return settings, deployment, started


def cmd_up(args: argparse.Namespace, out: Output) -> int:
    settings, deployment, _ = _bring_up(out)
    out.line(f"lake     {settings.lake_url}")
    out.line(f"chain    {settings.rpc_url} (chain id {deployment['chain_id']})")
    for name in ("BatchAnchor", "RewardDistributor", "RewardToken"):
        out.line(f"{name:<18} {deployment[name]}")
    out.result({"lake": settings.lake_url, "rpc_url": settings.rpc_url, "deployment": deployment})
    return EXIT_OK


def cmd_down(args: argparse.Namespace, out: Output) -> int:
    from pipeline import services

    settings = config.load()
    stopped = services.devnet_down(settings.home)
    if args.purge:
        shutil.rmtree(settings.home, ignore_errors=True)
    out.line(("stopped the local devnet" if stopped else "the local devnet was not running")
             + (f"; removed {settings.home}" if args.purge else ""))
    out.result({"stopped": stopped, "purged": bool(args.purge)})
    return EXIT_OK


def cmd_contribute(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages

    settings = config.load()
    lake = stages.lake_for(settings)
    stages.dataset_for(settings, args.dataset)
    keys = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise NotFound(f"{name}: no such file")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        # The drop key carries the content hash: contributing the same file twice is a no-op.
        key = f"{layout.incoming(args.dataset)}{digest[:16]}-{path.name}"
        if not lake.exists(key):
            lake.write(key, data)
        keys.append({"key": key, "sha256": digest, "bytes": len(data)})
        out.line(f"contributed {name} -> {lake.uri(key)}")
    out.result({"contributed": keys})
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages

    settings = config.load()
    report = stages.run(settings, args.dataset, out.progress)
    for c in report.committed:
        counts = c["counts"]
        out.line(f"committed {args.dataset} batch {c['seq']}: {counts['input']} records, {counts['accepted']} accepted, "
                 f"{counts['quarantined']} quarantined, {counts['duplicate']} duplicate; root {c['root']}")
    if not report.committed:
        out.line(f"{args.dataset}: no new sources" + (f"; finished batches {report.finished}" if report.finished else ""))
    out.result({"dataset": report.dataset, "committed": report.committed, "finished": report.finished})
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from pipeline import datasets, stages

    settings = config.load()
    lake = stages.lake_for(settings)
    names = [args.dataset] if args.dataset else datasets.available(settings.datasets_dir)
    checker = _AnchorChecker(settings, lake, out)
    result = []
    lost = 0
    for name in names:
        spec = stages.dataset_for(settings, name)
        seqs = manifests.committed_seqs(lake, name)
        for seq in seqs:
            m = manifests.load(lake, name, seq)
            record = stages.current_anchor(lake, name, seq)
            state = "not anchored" if record is None else checker.check(spec.dataset_id, seq, m, record)
            if record is not None and lake.exists(layout.anchor_current(name, seq)) and state.startswith("anchored"):
                lost_tx = json.loads(lake.read(layout.anchor(name, seq)))["tx_hash"]
                state += f"; re-anchored after a reorganisation removed {lost_tx}"
            lost += state.startswith("ANCHOR LOST")
            entry = {"dataset": name, "seq": seq, "root": m.root, "counts": m.data["counts"],
                     "anchored": state.startswith("anchored"), "anchor_state": state, "manifest_sha256": m.sha256,
                     "tx_hash": record["tx_hash"] if record else None}
            result.append(entry)
            c = m.data["counts"]
            out.line(f"{name} {seq:06d}  {c['accepted']:>8} accepted {c['quarantined']:>6} quarantined "
                     f"{c['duplicate']:>6} duplicate  root {m.root[:16]}…  {state}")
        if not seqs:
            out.line(f"{name}: no batches yet")
    out.result({"batches": result})
    return EXIT_CHECK if lost else EXIT_OK


class _AnchorChecker:
    """Checks anchor records against the chain, when one is reachable."""

    def __init__(self, settings: config.Settings, lake: Any, out: Output) -> None:
        self.settings, self.lake, self.out = settings, lake, out
        self.chain: Any = None
        self.unreachable: str | None = None

    def check(self, dataset_id: bytes, seq: int, m: Any, record: dict[str, Any]) -> str:
        from anchoring.chain import Chain, block_hash, read_batch

        if self.unreachable is None and self.chain is None:
            try:
                if not self.settings.rpc_url:
                    raise AnchorlakeError("no chain configured")
                self.chain = Chain(self.settings.rpc_url)
            except AnchorlakeError as e:
                self.unreachable = str(e)
        if self.chain is None:
            return f"anchored in {record['tx_hash']} (not checked: {self.unreachable})"
        if record.get("chain_id") != self.chain.chain_id:
            return f"anchored on chain {record.get('chain_id')} (not checked: the RPC serves chain {self.chain.chain_id})"
        onchain = read_batch(self.chain, record["contract"], dataset_id, seq)
        canonical = block_hash(self.chain, int(record["block_number"]))
        if not onchain.exists or canonical != record["block_hash"]:
            return (f"ANCHOR LOST: anchor.json names tx {record['tx_hash']} in block {record['block_number']}, "
                    "which the chain no longer holds (reorganisation?)")
        if (onchain.root.hex(), onchain.manifest_hash.hex()) != (m.root, m.sha256):
            return f"ANCHOR LOST: the chain holds root {onchain.root.hex()} for this seq"
        head = self.chain.w3.eth.block_number
        return f"anchored in {record['tx_hash']} ({head - int(record['block_number']) + 1} confirmations)"


def cmd_receipt(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages
    from pipeline.receipts import read_receipt

    settings = config.load()
    receipt = read_receipt(stages.lake_for(settings), args.dataset, args.batch, args.contributor)
    text = json.dumps(receipt, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
        out.line(f"wrote {args.output}: {len(receipt['rows'])} rows of {receipt['contributor']}")
        out.result({"file": args.output, "rows": len(receipt["rows"])})
    else:
        print(text)
    return EXIT_OK


def cmd_proof(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages
    from pipeline.receipts import serve_proof

    settings = config.load()
    lake = stages.lake_for(settings)
    m = manifests.load(lake, args.dataset, args.batch)
    proof = serve_proof(lake, args.dataset, args.batch, args.leaf) | {"root": m.root, "manifest_sha256": m.sha256}
    if out.as_json:
        out.result(proof)
    else:
        out.line(f"leaf {proof['leaf_index']} of {proof['tree_size']} in {args.dataset} batch {args.batch}: {proof['leaf']}")
        for n, node in enumerate(proof["path"]):
            out.line(f"  path[{n}] {node}")
        out.line(f"root {m.root}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    from pipeline.receipts import parse_receipt, verify_rows

    settings = config.load()
    parsed = []
    for name in args.receipts:
        try:
            raw = Path(name).read_bytes()
        except OSError as e:
            raise NotFound(f"{name}: {e.strerror}") from None
        parsed.append(parse_receipt(raw, name))
    expected_root = None
    if args.root is not None:
        text = args.root[2:] if args.root.startswith("0x") else args.root
        if len(text) != 64:
            raise BadInput(f"--root must be 64 hex characters, got {len(text)}")
        try:
            expected_root = bytes.fromhex(text)
        except ValueError:
            raise BadInput("--root is not hex") from None
    failures: list[str] = []
    results = []
    chain = None
    for receipt in parsed:
        problems = verify_rows(receipt)
        against = ""
        if expected_root is not None:
            if bytes.fromhex(receipt.data["root"]) != expected_root:
                problems.append(f"{receipt.source}: root {receipt.data['root']} is not the given root {expected_root.hex()}")
            against = "the given root (offline)"
        else:
            chain, checked = _verify_on_chain(receipt, settings, args.rpc, chain)
            problems += checked
            against = f"chain {chain.chain_id}"
        failures += problems
        results.append({"receipt": receipt.source, "ok": not problems, "rows": len(receipt.data["rows"]),
                        "failures": problems})
        if not problems:
            out.line(f"OK {receipt.source}: {len(receipt.data['rows'])} rows of {receipt.data['contributor']} in "
                     f"{receipt.dataset} batch {receipt.seq} verified against {against}")
    for line in failures:
        print(f"FAIL {line}", file=sys.stderr)
    out.result({"ok": not failures, "receipts": results})
    return EXIT_CHECK if failures else EXIT_OK


def _verify_on_chain(receipt: Any, settings: config.Settings, rpc: str | None, chain: Any) -> tuple[Any, list[str]]:
    from eth_hash.auto import keccak

    from anchoring.chain import Chain, published_root, read_batch
    from pipeline.receipts import verify_reward_proof

    url = rpc or settings.rpc_url
    anchor = receipt.data.get("anchor")
    if not url:
        raise BadInput("no chain to verify against: give --rpc URL, set ANCHORLAKE_RPC_URL, or use --root")
    if chain is None or chain.rpc_url != url:
        chain = Chain(url)
    problems = []
    where = receipt.source
    if anchor is not None and anchor["chain_id"] != chain.chain_id:
        return chain, [f"{where}: receipt is anchored on chain {anchor['chain_id']}, the RPC serves chain {chain.chain_id}"]
    address = settings.contracts.get("BatchAnchor") or (anchor or {}).get("contract")
    if not address:
        return chain, [f"{where}: receipt names no anchor contract; set ANCHORLAKE_BATCH_ANCHOR"]
    dataset_id = keccak(receipt.dataset.encode("utf-8"))
    onchain = read_batch(chain, address, dataset_id, receipt.seq)
    if not onchain.exists:
        return chain, [f"{where}: {receipt.dataset} batch {receipt.seq} is not anchored in contract {address}"]
    if onchain.root.hex() != receipt.data["root"]:
        problems.append(f"{where}: root {receipt.data['root']} differs from the anchored {onchain.root.hex()}")
    if onchain.tree_size != receipt.data["tree_size"]:
        problems.append(f"{where}: tree size {receipt.data['tree_size']} differs from the anchored {onchain.tree_size}")
    if onchain.manifest_hash.hex() != receipt.data["manifest_sha256"]:
        problems.append(f"{where}: manifest {receipt.data['manifest_sha256']} differs from the anchored "
                        f"{onchain.manifest_hash.hex()}")
    reward = receipt.data.get("reward")
    distributor = settings.contracts.get("RewardDistributor") or (reward or {}).get("contract")
    if reward is not None and distributor:
        root = published_root(chain, distributor, dataset_id, receipt.seq)
        if root is None:
            problems.append(f"{where}: rewards of batch {receipt.seq} are not published in {distributor}")
        else:
            problems += verify_reward_proof(receipt, root)
    return chain, problems


def cmd_pull(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages
    from pipeline.merkle import build_levels, root_from_levels
    from pipeline.receipts import batch_records
    from pipeline.rows import leaf_function

    settings = config.load()
    lake = stages.lake_for(settings)
    spec = stages.dataset_for(settings, args.dataset)
    seqs = [args.batch] if args.batch is not None else manifests.committed_seqs(lake, args.dataset)
    dest = Path(args.dest)
    pulled = []
    chain = None
    for seq in seqs:
        m = manifests.load(lake, args.dataset, seq)
        target = dest / args.dataset / layout.seq_part(seq)
        (target / "data").mkdir(parents=True, exist_ok=True)
        if not args.no_verify:
            out.progress(f"verifying batch {seq}")
            records = batch_records(lake, spec, m)  # checks every file's SHA-256
            leaf = leaf_function(spec.committed_columns)  # recomputed from the rows themselves
            root = root_from_levels(build_levels([leaf(r) for r in records])).hex()
            if root != m.root:
                raise CheckFailed(f"batch {seq}: data recomputes to root {root}, manifest says {m.root}")
            from anchoring.chain import read_batch, require_deployment

            chain = chain or stages.chain_for(settings)
            address = require_deployment(chain, lake, dict(settings.contracts))["BatchAnchor"]
            onchain = read_batch(chain, address, spec.dataset_id, seq)
            if (onchain.root.hex(), onchain.tree_size, onchain.manifest_hash.hex()) != (m.root, m.tree_size, m.sha256):
                raise CheckFailed(f"batch {seq}: the chain anchors root {onchain.root.hex()} / manifest "
                                  f"{onchain.manifest_hash.hex()}, the lake has {m.root} / {m.sha256}")
        for entry in m.data["files"]:
            data = lake.read(layout.batch(args.dataset, seq) + entry["path"])
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CheckFailed(f"batch {seq}: {entry['path']} differs from the manifest")
            (target / entry["path"]).write_bytes(data)
        (target / "manifest.json").write_bytes(lake.read(layout.manifest(args.dataset, seq)))
        pulled.append({"seq": seq, "rows": m.tree_size, "root": m.root, "verified": not args.no_verify})
        out.line(f"pulled {args.dataset} batch {seq}: {m.tree_size} rows -> {target}"
                 + ("" if args.no_verify else " (verified against the chain)"))
    out.result({"pulled": pulled})
    return EXIT_OK


def cmd_rewards(args: argparse.Namespace, out: Output) -> int:
    import io

    import pyarrow.parquet as pq

    from pipeline import stages

    settings = config.load()
    lake = stages.lake_for(settings)
    spec = stages.dataset_for(settings, args.dataset)
    seqs = manifests.committed_seqs(lake, args.dataset)
    if not seqs:
        raise NotFound(f"{args.dataset} has no batches yet")
    seq = args.batch if args.batch is not None else seqs[-1]
    m = manifests.load(lake, args.dataset, seq)
    rows = pq.read_table(io.BytesIO(lake.read(layout.rewards(args.dataset, seq)))).to_pylist()
    rewards = m.data["rewards"]
    out.line(f"{args.dataset} batch {seq}: pool {rewards['pool']} {rewards['unit']}, paid {rewards['total']}, "
             f"root 0x{rewards['root']}")
    for r in rows:
        out.line(f"  {r['contributor']}  {r['accepted']:>6} accepted  amount {r['amount']:>28}  cumulative {r['cumulative_amount']}")
    verified = None
    if args.verify:
        from anchoring.chain import published_root, require_deployment

        chain = stages.chain_for(settings)
        deployment = require_deployment(chain, lake, dict(settings.contracts))
        onchain = published_root(chain, deployment["RewardDistributor"], spec.dataset_id, seq)
        verified = onchain is not None and onchain.hex() == rewards["root"]
        if not verified:
            raise CheckFailed(f"rewards root of batch {seq} on chain is "
                              f"{onchain.hex() if onchain else 'unpublished'}, the lake has {rewards['root']}")
        out.line("rewards root verified against the chain")
    out.result({"dataset": args.dataset, "seq": seq, "rewards": rewards, "rows": rows, "verified": verified})
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from pipeline import services, stages

    home = config.load().home
    dataset = "instructions"
    started = False
    try:
        settings, deployment, started = _bring_up(out)
        quiet = Output(as_json=False, quiet=out.quiet)
        lake = stages.lake_for(settings)
        samples = sorted((settings.samples_dir / dataset).glob("*.jsonl*"))
        cmd_contribute(argparse.Namespace(files=[str(p) for p in samples], dataset=dataset), quiet)
        report = stages.run(settings, dataset, out.progress)
        seq = manifests.committed_seqs(lake, dataset)[-1]
        m = manifests.load(lake, dataset, seq)
        anchor = json.loads(lake.read(layout.anchor(dataset, seq)))
        from pipeline.receipts import read_receipt

        first = next(lake.list(f"receipts/{dataset}/{layout.seq_part(seq)}/0x"))
        contributor = first.key.rsplit("/", 1)[1].removesuffix(".json")
        receipt_path = settings.home / f"receipt-{dataset}-{seq:06d}-{contributor}.json"
        receipt_path.write_text(json.dumps(read_receipt(lake, dataset, seq, contributor), indent=1))
        code = cmd_verify(argparse.Namespace(receipts=[str(receipt_path)], root=None, rpc=None), quiet)
        c = m.data["counts"]
        r = m.data["rewards"]
        print()
        print(f"dataset      {dataset} (batch {seq}{', committed now' if report.committed else ', committed earlier'})")
        print(f"records      {c['input']} in: {c['accepted']} accepted, {c['quarantined']} quarantined, {c['duplicate']} duplicate")
        print(f"merkle root  {m.root} over {m.tree_size} rows")
        print(f"anchor       tx {anchor['tx_hash']} in block {anchor['block_number']} on chain {anchor['chain_id']}"
              f" (BatchAnchor {deployment['BatchAnchor']})")
        print(f"rewards      pool {r['pool']} {r['unit']} split over "
              f"{len(json.loads(lake.read(layout.rewards_tree(dataset, seq)))['values'])} contributors, root 0x{r['root']}")
        print(f"receipt      {receipt_path}")
        if code == EXIT_OK:
            print(f"verified     the receipt of {contributor} verified against the chain")
        return code
    finally:
        if started:
            services.devnet_down(home)


# --- entry point --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="anchorlake", description="Verifiable AI-training data lake: ingest, validate, anchor, reward.")
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show a traceback for unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("up", help="start the embedded default (devnet, contracts) or deploy to ANCHORLAKE_RPC_URL")
    down = sub.add_parser("down", help="stop the embedded devnet")
    down.add_argument("--purge", action="store_true", help="also delete the local lake and chain state")
    c = sub.add_parser("contribute", help="drop contribution files into the lake")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--dataset", required=True)
    r = sub.add_parser("run", help="one batch now, every stage")
    r.add_argument("--dataset", required=True)
    s = sub.add_parser("status", help="batches and their anchoring")
    s.add_argument("--dataset")
    rc = sub.add_parser("receipt", help="a contributor's receipt for a batch")
    rc.add_argument("--dataset", required=True)
    rc.add_argument("--batch", required=True, type=_seq)
    rc.add_argument("--contributor", required=True, type=_address)
    rc.add_argument("-o", "--output")
    pf = sub.add_parser("proof", help="one leaf's inclusion proof, served from the stored tree")
    pf.add_argument("--dataset", required=True)
    pf.add_argument("--batch", required=True, type=_seq)
    pf.add_argument("--leaf", required=True, type=_seq)
    v = sub.add_parser("verify", help="verify receipts against the chain or a given root")
    v.add_argument("receipts", nargs="+", metavar="RECEIPT")
    v.add_argument("--rpc")
    v.add_argument("--root", help="verify offline against this root (hex)")
    pl = sub.add_parser("pull", help="download validated Parquet and check it is what was anchored")
    pl.add_argument("--dataset", required=True)
    pl.add_argument("--batch", type=_seq)
    pl.add_argument("--dest", required=True)
    pl.add_argument("--no-verify", action="store_true")
    rw = sub.add_parser("rewards", help="a batch's reward split")
    rw.add_argument("--dataset", required=True)
    rw.add_argument("--batch", type=_seq)
    rw.add_argument("--verify", action="store_true")
    sub.add_parser("demo", help="up, sample contributions, run, receipt, verify")
    return p


def _seq(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"batch must be a number >= 0, got {text!r}")
    return int(text)


def _address(text: str) -> str:
    lower = text.lower()
    if len(lower) != 42 or not lower.startswith("0x") or any(ch not in "0123456789abcdef" for ch in lower[2:]):
        raise argparse.ArgumentTypeError(f"contributor must be 0x and 40 hex digits, got {text!r}")
    return lower


COMMANDS = {"up": cmd_up, "down": cmd_down, "contribute": cmd_contribute, "run": cmd_run, "status": cmd_status,
            "receipt": cmd_receipt, "proof": cmd_proof, "verify": cmd_verify, "pull": cmd_pull, "rewards": cmd_rewards, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Output(as_json=args.json, quiet=args.quiet)
    try:
        return COMMANDS[args.command](args, out)
    except AnchorlakeError as e:
        # One line; a service that failed to start adds its log tail below it.
        message = f"anchorlake: {e}"
        print(message if e.exit_code == EXIT_SERVICE else message.splitlines()[0], file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("anchorlake: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"anchorlake: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return EXIT_CHECK


if __name__ == "__main__":
    raise SystemExit(main())
