"""`anchorlake`: the command line (SPEC §10).

Argparse and printing only: every command is a call into `stages` (what the DAG runs) or
`verify` (what users check). Exit codes: 0 done; 1 a check failed; 2 bad usage or bad input;
3 a service cannot be reached. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import itertools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, NoReturn

from pipeline import config
from pipeline.errors import AnchorlakeError, BadInput, CheckFailed, NotFound, redact, redact_url
from pipeline.progress import Tick, bar, silent

EXIT_OK, EXIT_CHECK, EXIT_USAGE, EXIT_SERVICE = 0, 1, 2, 3


GLOBAL_FLAGS = (("--json", "print machine-readable results on stdout"), ("--quiet", "no progress lines"),
                ("--debug", "show a traceback for unexpected errors"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"anchorlake: {message} (see `anchorlake --help`)\n")
        raise SystemExit(EXIT_USAGE)


class _Command(_Parser):
    """A subcommand's parser: the global flags are accepted after the subcommand too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for flag, text in GLOBAL_FLAGS:
            self.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)


class Output:
    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def progress(self, message: str) -> None:
        """A progress line on stderr; none with --quiet or --json."""
        if not (self.quiet or self.as_json):
            print(f"... {message}", file=sys.stderr, flush=True)

    def meter(self, what: str, unit: str = "rows", total: int | None = None) -> AbstractContextManager[Tick]:
        """A progress bar for long work (pipeline.progress.Meter); none with --quiet or --json."""
        return (silent if self.quiet or self.as_json else bar)(what, unit, total)

    def line(self, message: str) -> None:
        if not self.as_json:
            print(message, flush=True)

    def result(self, data: Any) -> None:
        if self.as_json:
            print(json.dumps(data, indent=1, default=str))


# --- commands -----------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages

    settings, deployment, _ = stages.bring_up(out.progress)
    out.line(f"lake     {settings.lake_url}")
    out.line(f"chain    {redact_url(settings.rpc_url or '')} (chain id {deployment['chain_id']})")
    for name in ("BatchAnchor", "RewardDistributor", "RewardToken"):
        out.line(f"{name:<18} {deployment[name]}")
    if args.output:
        Path(args.output).write_text(json.dumps(deployment, indent=1) + "\n")
        out.line(f"wrote {args.output}: publish it for contributors and AI teams to verify against")
    out.result({"lake": settings.lake_url, "rpc_url": redact_url(settings.rpc_url or ""), "deployment": deployment})
    return EXIT_OK


def cmd_down(args: argparse.Namespace, out: Output) -> int:
    from pipeline import devnet

    settings = config.load()
    stopped = devnet.devnet_down(settings.home)
    if args.purge:
        shutil.rmtree(settings.home, ignore_errors=True)
    out.line(("stopped the local devnet" if stopped else "the local devnet was not running")
             + (f"; removed {settings.home}" if args.purge else ""))
    out.result({"stopped": stopped, "purged": bool(args.purge)})
    return EXIT_OK


def cmd_contribute(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages

    settings = config.load()
    paths = [Path(name) for name in args.files]
    stages.dataset_for(settings, args.dataset)
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:  # before anything is dropped, as stages.contribute checks
        raise NotFound(f"{missing}: no such file")
    sizes = [path.stat().st_size for path in paths]
    dropped: list[dict[str, Any]] = []
    with out.meter(f"contributing to {args.dataset}", "bytes", sum(sizes)) as tick:
        for group in _groups(list(zip(paths, sizes, strict=True))):
            dropped += stages.contribute(settings, args.dataset, [path for path, _ in group], args.sign)
            tick(sum(size for _, size in group))
    for name, entry in zip(args.files, dropped, strict=True):
        signed = f" (signed by {entry['signer']}, {name}.sig.json beside it)" if args.sign else ""
        out.line(f"contributed {name} -> {entry['uri']}{signed}")
    out.result({"contributed": [{k: v for k, v in entry.items() if k != "uri"} for entry in dropped]})
    return EXIT_OK


CONTRIBUTE_GROUP_BYTES = 8 << 20  # files dropped per call of stages.contribute, at least (one lake client each)


def _groups(files: list[tuple[Path, int]], count: int = 50) -> list[list[tuple[Path, int]]]:
    """(path, bytes) in order, in at most about `count` groups of similar bytes, each of at least
    CONTRIBUTE_GROUP_BYTES but the last: each group is one call (one lake client), each group's
    end a step of the progress bar."""
    step = max(1, CONTRIBUTE_GROUP_BYTES, sum(size for _, size in files) // count)
    groups: list[list[tuple[Path, int]]] = [[]]
    held = 0
    for path, size in files:
        if groups[-1] and held >= step:
            groups.append([])
            held = 0
        groups[-1].append((path, size))
        held += size
    return groups


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages

    settings = config.load()
    report = stages.run(settings, args.dataset, out.progress, out.meter)
    for c in report.committed:
        counts = c["counts"]
        out.line(f"committed {args.dataset} batch {c['seq']}: {counts['input']} records, {counts['accepted']} accepted, "
                 f"{counts['quarantined']} quarantined, {counts['duplicate']} duplicate; root {c['root']}")
    if not report.committed:
        out.line(f"{args.dataset}: no new sources" + (f"; finished batches {report.finished}" if report.finished else ""))
    for problem in report.unfinished:
        print(f"FAIL {problem}; see anchorlake audit --dataset {args.dataset}", file=sys.stderr)
    out.result({"dataset": report.dataset, "committed": report.committed, "finished": report.finished,
                "seconds": report.seconds, "unfinished": report.unfinished})
    return EXIT_CHECK if report.unfinished else EXIT_OK


def cmd_commit(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages

    settings = config.load()
    with out.meter(f"{args.dataset}: committing batch {args.batch}", "records") as tick:
        c = stages.commit(settings, args.dataset, args.batch, tick)
    counts = c["counts"]
    out.line(f"committed {args.dataset} batch {c['seq']}: {counts['input']} records, {counts['accepted']} accepted, "
             f"{counts['quarantined']} quarantined, {counts['duplicate']} duplicate; root {c['root']}")
    out.result(c)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from pipeline import datasets, stages
    from pipeline.lake.batch import BatchFiles, committed_seqs
    from pipeline.verify import AnchorStates

    settings = config.load()
    lake = stages.lake_for(settings)
    names = [args.dataset] if args.dataset else datasets.available(settings.datasets_dir)
    states = AnchorStates(settings.rpc_url, lambda chain: stages.deployment_for(
        settings, chain, ("BatchAnchor",), signer_roles=False)["BatchAnchor"])
    result = []
    for name in names:
        spec = stages.dataset_for(settings, name)
        seqs = committed_seqs(lake, name)
        for seq in seqs:
            entry = _batch_status(BatchFiles(lake, name, seq), spec, states)
            result.append(entry)
            c = entry["counts"] or {"accepted": "?", "quarantined": "?", "duplicate": "?"}
            out.line(f"{name} {seq:06d}  {c['accepted']:>8} accepted {c['quarantined']:>6} quarantined "
                     f"{c['duplicate']:>6} duplicate  root {(entry['root'] or '?')[:16]}…  {entry['anchor_state']}")
        if not seqs:
            out.line(f"{name}: no batches yet")
    out.result({"batches": result})
    if any(r["anchor_state"].startswith(("ANCHOR LOST", "LAKE ALTERED")) for r in result):
        return EXIT_CHECK
    return states.exit_code if any("(not checked:" in r["anchor_state"] for r in result) else EXIT_OK


def _batch_status(files: Any, spec: Any, states: Any) -> dict[str, Any]:
    """One batch's line of `status`; a batch whose files fail their checks is reported, not fatal."""
    entry: dict[str, Any] = {"dataset": files.dataset, "seq": files.seq, "root": None, "counts": None,
                             "manifest_sha256": None, "tx_hash": None}
    try:
        m = files.manifest()
        entry |= {"root": m.root, "counts": m.data["counts"], "manifest_sha256": m.sha256}
        state, record = states.state(files, spec)
        entry["tx_hash"] = record["tx_hash"] if record else None
    except (BadInput, CheckFailed) as e:
        state = f"LAKE ALTERED: {e}"
    return entry | {"anchored": state.startswith("anchored"), "anchor_state": state}


def _committed_batch(args: argparse.Namespace) -> Any:
    """BatchFiles of --dataset/--batch; NotFound naming an unknown dataset or batch."""
    from pipeline import stages
    from pipeline.lake.batch import BatchFiles

    settings = config.load()
    stages.dataset_for(settings, args.dataset)
    files = BatchFiles(stages.lake_for(settings), args.dataset, args.batch)
    if not files.committed():
        raise NotFound(f"{args.dataset} has no batch {args.batch}")
    return files


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    """Declarations and suites validated without data: one line per problem, exit 2 if any."""
    from pipeline import datasets, stages

    settings = config.load()
    names = [args.dataset] if args.dataset else datasets.available(settings.datasets_dir)
    found = {name: stages.check(settings, name) for name in names}
    for name, problems in found.items():
        for line in problems:
            print(f"FAIL {line}", file=sys.stderr)
        if not problems:
            out.line(f"OK {name}: declaration and suite are valid")
    out.result({"datasets": {name: {"ok": not problems, "problems": problems} for name, problems in found.items()}})
    return EXIT_USAGE if any(found.values()) else EXIT_OK


def cmd_receipt(args: argparse.Namespace, out: Output) -> int:
    files = _committed_batch(args)
    try:
        receipt = files.receipt(args.contributor).data
    except NotFound:
        row = next((r for r in files.rewards_rows() if r["contributor"] == args.contributor), None)
        if row is None or row["accepted"]:
            raise
        raise NotFound(f"{args.contributor} has no accepted row in {args.dataset} batch {args.batch}: "
                       f"{row['quarantined']} rejected, {row['duplicate']} duplicate; see anchorlake explain "
                       f"--dataset {args.dataset} --batch {args.batch} --contributor {args.contributor}") from None
    text = json.dumps(receipt, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
        out.line(f"wrote {args.output}: {_rows(len(receipt['rows']))} of {receipt['contributor']}")
        out.result({"file": args.output, "rows": len(receipt["rows"])})
    else:
        print(text)
    return EXIT_OK


def cmd_proof(args: argparse.Namespace, out: Output) -> int:
    from pipeline.receipts import serve_proof, serve_range_proof

    files = _committed_batch(args)
    m = files.manifest()
    served = serve_proof(files, args.leaf) if args.leaf is not None else serve_range_proof(files, *args.range)
    proof = served | {"root": m.root, "manifest_sha256": m.sha256}
    if out.as_json:
        out.result(proof)
        return EXIT_OK
    if args.leaf is not None:
        out.line(f"leaf {proof['leaf_index']} of {proof['tree_size']} in {args.dataset} batch {args.batch}: {proof['leaf']}")
    else:
        out.line(f"leaves [{args.range[0]}, {args.range[1]}) of {proof['tree_size']} in {args.dataset} batch {args.batch}")
    for n, node in enumerate(proof["path" if args.leaf is not None else "proof"]):
        out.line(f"  {'path' if args.leaf is not None else 'proof'}[{n}] {node}")
    out.line(f"root {m.root}")
    return EXIT_OK


def _root_argument(text: str) -> bytes:
    hex_text = text[2:] if text.startswith("0x") else text
    if len(hex_text) != 64:
        raise BadInput(f"--root must be 64 hex characters, got {len(hex_text)}")
    try:
        return bytes.fromhex(hex_text)
    except ValueError:
        raise BadInput("--root is not hex") from None


def _receipts_in(name: str) -> Iterator[tuple[str, bytes]]:
    """(source, bytes) of the receipt in file `name` (`*.gz`: gzip of it), or of each line of a
    JSON Lines file of receipts (`*.jsonl`, or `*.jsonl.gz` as a batch's receipts are published),
    read as it is used. A receipt over MAX_RECEIPT_BYTES is refused: what anyone can hand a
    contributor may be a decompression bomb."""
    from pipeline.core.receipt import MAX_RECEIPT_BYTES, gunzip, lines, unpacked

    packed = name.endswith(".gz")
    if not name.removesuffix(".gz").endswith(".jsonl"):
        raw = _read(name)
        yield name, unpacked(raw, name, MAX_RECEIPT_BYTES) if packed else raw
        return
    try:
        stream = open(name, "rb")
    except OSError as e:
        raise NotFound(f"{name}: {e.strerror}") from None
    found = False
    with stream:
        pieces = gunzip(stream.read, name) if packed else iter(functools.partial(stream.read, 1 << 20), b"")
        for number, line in lines(pieces, name, MAX_RECEIPT_BYTES):
            if line.strip():
                found = True
                yield f"{name} line {number}", line
    if not found:
        raise BadInput(f"{name}: holds no receipts")


def _read(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise NotFound(f"{name}: {e.strerror}") from None


def _trusted_contracts(args: argparse.Namespace, settings: config.Settings, chain_id: int) -> dict[str, str]:
    """Contract addresses the user trusts: the environment, then a deployments file the user
    names (--deployment), then flags. Never the lake's record nor the receipt."""
    from pipeline.core.records import DEPLOYMENT

    contracts = dict(settings.contracts)
    if args.deployment:
        named = DEPLOYMENT.load(_read(args.deployment), args.deployment)
        if named["chain_id"] != chain_id:
            raise BadInput(f"{args.deployment} is for chain {named['chain_id']}, the RPC serves chain {chain_id}")
        contracts |= {k: named[k] for k in ("BatchAnchor", "RewardDistributor") if k in named}
    flags = {"BatchAnchor": args.contract, "RewardDistributor": args.distributor}
    return contracts | {k: config.checked_address(v, f"the {k} address") for k, v in flags.items() if v}


def _trust(args: argparse.Namespace, settings: config.Settings, dataset: str | None, needs: tuple[str, ...],
           what: str) -> tuple[Any, Any]:
    """(read-only chain, TrustAnchors) from what the user gives: --rpc or ANCHORLAKE_RPC_URL, the
    dataset name, and the contracts `needs` ("BatchAnchor", "RewardDistributor") from
    _trusted_contracts. BadInput naming the flags when something is missing."""
    from pipeline import verify

    url = getattr(args, "rpc", None) or settings.rpc_url
    if not url:
        raise BadInput(f"no chain to {what} against: give --rpc URL or set ANCHORLAKE_RPC_URL")
    chain = verify.connect(url)
    contracts = _trusted_contracts(args, settings, chain.chain_id)
    flags = {"BatchAnchor": ("--contract", "ANCHORLAKE_BATCH_ANCHOR"),
             "RewardDistributor": ("--distributor", "ANCHORLAKE_REWARD_DISTRIBUTOR")}
    missing = [name for name in needs if not contracts.get(name)]
    if not dataset or missing:
        wanted = " and ".join(f"the {n} you trust ({flags[n][0]} ADDR, --deployment FILE or {flags[n][1]})"
                              for n in missing or needs)
        raise BadInput(f"nothing to {what} against: give --dataset NAME and {wanted}; never the lake's own record")
    return chain, verify.TrustAnchors(dataset, contracts.get("BatchAnchor", ""), contracts.get("RewardDistributor"))


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    """Receipts are read, checked and let go one at a time: a batch's receipts file may be large."""
    from pipeline import history
    from pipeline.core.receipt import parse

    settings = config.load()
    inputs = (item for name in args.receipts for item in _receipts_in(name))
    first = next(inputs)
    if _is_history(first[1]):
        given = [first, *inputs]
        proofs = [(source, history.load(raw, source)) for source, raw in given if _is_history(raw)]
        return _verify_history(args, settings, proofs, out, len(proofs) < len(given))
    check: Callable[[Any], Any] | None = None
    results: list[dict[str, Any]] = []
    for source, raw in itertools.chain([first], inputs):
        if _is_history(raw):
            raise BadInput("give history proofs and receipts to separate verify commands")
        receipt = parse(raw, source)
        check = check or _receipt_check(args, settings)  # after the first receipt reads: its errors come first
        found = check(receipt)
        data = receipt.data
        if not found.problems:
            out.line(f"OK {source}: {_rows(len(data['rows']))} of {data['contributor']}{found.scope} "
                     f"verified against {found.against}")
        for line in found.problems:  # now: a damaged part further on must not hide it
            print(f"FAIL {line}", file=sys.stderr)
        results.append({"receipt": source, "ok": not found.problems, "rows": len(data["rows"]),
                        "failures": found.problems})
    failures = [line for r in results for line in r["failures"]]
    out.result({"ok": not failures, "receipts": results})
    return EXIT_CHECK if failures else EXIT_OK


def _receipt_check(args: argparse.Namespace, settings: config.Settings) -> Callable[[Any], Any]:
    """What each receipt is verified with: the root and tree size the user gives, or the chain."""
    from pipeline import verify

    if args.root is not None:
        if args.tree_size is None:
            raise BadInput("--root needs --tree-size: a path alone does not bind the size of the tree")
        root = _root_argument(args.root)
        return lambda r: verify.receipt_offline(r, root, args.tree_size, args.dataset)
    if not (args.rpc or settings.rpc_url):
        raise BadInput("no chain to verify against: give --rpc URL, set ANCHORLAKE_RPC_URL, or use --root")
    chain, trust = _trust(args, settings, args.dataset, ("BatchAnchor",), "verify")
    return lambda r: verify.receipt_on_chain(r, chain, trust)


def _is_history(raw: bytes) -> bool:
    """Whether a file given to `verify` is a history proof rather than a receipt (by its format
    tag; anything unreadable is left to the receipt reader to name)."""
    from pipeline import history

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == history.FORMAT


def _verify_history(args: argparse.Namespace, settings: config.Settings, proofs: list[tuple[str, dict[str, Any]]],
                    out: Output, mixed: bool) -> int:
    """verify for history proofs (SPEC §13.9): each against the chain, BatchAnchor and dataset the user gives."""
    from pipeline import history

    if mixed:
        raise BadInput("give history proofs and receipts to separate verify commands")
    chain, trust = _trust(args, settings, args.dataset, ("BatchAnchor",), "verify")
    results: list[dict[str, Any]] = []
    for source, document in proofs:
        try:
            results.append({"proof": source, "ok": True,
                            "proven": history.check_on_chain(document, source, chain, trust.batch_anchor, trust.dataset)})
            out.line(f"OK {source}: {results[-1]['proven']}")
        except (CheckFailed, BadInput) as e:  # BadInput: a malformed proof, exit 2 (SPEC §10)
            results.append({"proof": source, "ok": False, "failures": [str(e)], "exit": e.exit_code})
            print(f"FAIL {source}: {e}", file=sys.stderr)
    out.result({"ok": all(r["ok"] for r in results), "proofs": results})
    return max((int(r.get("exit", EXIT_OK)) for r in results), default=EXIT_OK)


def cmd_history(args: argparse.Namespace, out: Output) -> int:
    from anchoring.batch_anchor import next_anchor_seq
    from pipeline import history, stages
    from pipeline.core.jcs import canonical_bytes
    from pipeline.datasets import dataset_id
    from pipeline.lake.batch import committed_seqs, linked_manifests

    settings = config.load()
    lake = stages.lake_for(settings)
    chain, trust = _trust(args, settings, args.dataset, ("BatchAnchor",), "prove the history")
    anchored = next_anchor_seq(chain, trust.batch_anchor, dataset_id(args.dataset))
    first, second = history.first_and_last(args.first, args.last, min(anchored, len(committed_seqs(lake, args.dataset))))
    document = history.proof_document(linked_manifests(lake, args.dataset, second), first, second)
    proven = history.check_on_chain(document, "the proof", chain, trust.batch_anchor, args.dataset)
    out.line(proven)
    out.line(f"consistency proof {first} -> {second} ({len(document['proof'])} hashes): "
             + (" ".join(document["proof"]) or "(none needed)"))
    cite = document["to"]
    out.line(f"cite this training set as ({args.dataset}, {cite['seq']}, {cite['manifest_sha256']})")
    if args.output:
        Path(args.output).write_bytes(canonical_bytes(document))
        out.line(f"wrote {args.output}: anyone checks it with `anchorlake verify {args.output} --dataset "
                 f"{args.dataset} --contract ADDR --rpc URL`")
    out.result(document)
    return EXIT_OK


def cmd_table(args: argparse.Namespace, out: Output) -> int:
    from pipeline import iceberg, stages

    settings = config.load()
    added = stages.register_table(settings, args.dataset, args.rebuild)
    uri, _ = config.iceberg_catalog(settings.home)
    table = iceberg.identifier(args.dataset)
    out.line(f"{table}: registered batches {', '.join(map(str, added))}" if added else f"{table}: up to date")
    out.line(f"catalog {redact_url(uri)}; one snapshot per anchored batch, tagged seq-NNNNNN")
    out.result({"table": table, "added": added, "catalog": redact_url(uri)})
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages, verify

    settings = config.load()
    spec = stages.dataset_for(settings, args.dataset)
    chain, trust = _trust(args, settings, args.dataset, ("BatchAnchor",), "audit")
    out.progress(f"auditing {args.dataset} against chain {chain.chain_id}")
    lake = stages.lake_for(settings)
    with out.meter(f"auditing {args.dataset}", "rows", verify.committed_rows(lake, spec)) as tick:
        sound, problem = verify.audit(lake, spec, chain, trust, tick)
    checked = "anchor and rewards root" if trust.distributor else "anchor (rewards not checked: no distributor given)"
    for seq in sound:
        out.line(f"{args.dataset} {seq:06d}  sound: files, manifest chain, rows and root; {checked} on chain")
    if problem is not None:
        print(f"FAIL {problem}", file=sys.stderr)
    out.result({"dataset": args.dataset, "sound": sound, "first_difference": problem,
                "rewards_checked": trust.distributor is not None})
    return EXIT_CHECK if problem else EXIT_OK


def cmd_pull(args: argparse.Namespace, out: Output) -> int:
    from pipeline import pull, stages

    settings = config.load()
    lake = stages.lake_for(settings)
    spec = stages.dataset_for(settings, args.dataset)
    anchored, seqs = _pull_plan(args, settings, lake, spec)
    dest = pull.Destination(Path(args.dest), args.dataset)
    report = pull.pull_dataset(lake, spec, seqs, dest, anchored,
                               lambda seq, rows: out.meter(f"{args.dataset} batch {seq}", "rows", rows))
    how = "verified against the chain" if anchored else "NOT verified: checked against the lake's manifest only"
    for record in report.pulled:
        out.line(f"pulled {args.dataset} batch {record['seq']}: {record['rows']} rows -> {args.dest} ({how})")
    for record in report.kept:
        out.line(f"kept {args.dataset} batch {record['seq']}: already in {args.dest}, files still match "
                 + ("the anchored manifest" if anchored else "its manifest"))
    for name in report.removed:
        out.line(f"removed {name} from {args.dest}: no pulled manifest names it")
    for failure in report.failed:
        print(f"FAIL {args.dataset} batch {failure['seq']} cannot be pulled: {failure['error']}", file=sys.stderr)
    out.result(report.as_dict())
    return EXIT_CHECK if report.failed else EXIT_OK


def _pull_plan(args: argparse.Namespace, settings: config.Settings, lake: Any, spec: Any) -> tuple[Any, list[int]]:
    """(the check each manifest must pass, or None with --no-verify; the batches to pull): one
    batch, or every batch the chain anchors (one missing from the lake is a failure, not a gap),
    or unverified, every batch the lake holds."""
    from anchoring.batch_anchor import next_anchor_seq
    from pipeline.lake.batch import BatchFiles, committed_seqs
    from pipeline.verify import manifest_anchored

    if args.no_verify:
        if args.batch is not None and not BatchFiles(lake, args.dataset, args.batch).committed():
            raise NotFound(f"{args.dataset} has no batch {args.batch}")
        return None, [args.batch] if args.batch is not None else committed_seqs(lake, args.dataset)
    chain, trust = _trust(args, settings, args.dataset, ("BatchAnchor",), "verify the pull")
    anchored_count = next_anchor_seq(chain, trust.batch_anchor, spec.dataset_id)
    if args.batch is not None and args.batch >= anchored_count and not BatchFiles(lake, args.dataset, args.batch).committed():
        raise NotFound(f"{args.dataset} has no batch {args.batch}")
    seqs = [args.batch] if args.batch is not None else list(range(anchored_count))
    return (lambda m: manifest_anchored(m, spec.dataset_id, chain, trust.batch_anchor)), seqs


def cmd_rewards(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages
    from pipeline.lake.batch import BatchFiles, committed_seqs
    from pipeline.verify import rewards_statement

    settings = config.load()
    lake = stages.lake_for(settings)
    spec = stages.dataset_for(settings, args.dataset)
    if args.contributor:
        return _contributor_statement(args, settings, lake, spec, out)
    seqs = committed_seqs(lake, args.dataset)
    if not seqs:
        raise NotFound(f"{args.dataset} has no batches yet")
    seq = args.batch if args.batch is not None else seqs[-1]
    files = BatchFiles(lake, args.dataset, seq)
    if args.verify:  # before anything is shown: a doctored table is never printed as verified
        chain, trust = _trust(args, settings, args.dataset, ("BatchAnchor", "RewardDistributor"), "verify the rewards")
        rewards_statement(files, spec, chain, trust)
    rewards, rows = files.manifest().rewards, files.rewards_rows()
    out.line(f"{args.dataset} batch {seq}: {_terms(rewards)}, paid {rewards['total']}, "
             f"root 0x{rewards['root']}")
    for r in rows:
        out.line(f"  {r['contributor']}  {r['accepted']:>6} accepted  amount {r['amount']:>28}  cumulative {r['cumulative_amount']}")
    if args.verify:
        out.line(f"verified: the manifest is the anchored one in BatchAnchor {trust.batch_anchor}, the rewards root "
                 f"is the one published in RewardDistributor {trust.distributor} on chain {chain.chain_id}, and "
                 "every row agrees with the rewards tree")
    out.result({"dataset": args.dataset, "seq": seq, "rewards": rewards, "rows": rows,
                "verified": True if args.verify else None})
    return EXIT_OK


def _contributor_statement(args: argparse.Namespace, settings: config.Settings, lake: Any, spec: Any,
                           out: Output) -> int:
    """`rewards --contributor`: every batch's amounts, and with a trusted distributor, claimed and claimable."""
    from pipeline import claims

    owed = None
    if args.distributor or args.deployment or settings.contracts.get("RewardDistributor"):
        chain, trust = _trust(args, settings, args.dataset, ("RewardDistributor",), "read the claims")
        try:
            owed = claims.entitlement(lake, spec, chain, str(trust.distributor), args.contributor)
        except NotFound:
            owed = None
    result = claims.statement(lake, spec, args.contributor, owed)
    out.line(f"{args.contributor} in {args.dataset} ({result['unit']}):")
    for b in result["batches"]:
        out.line(f"  batch {b['seq']:>6}  {b['accepted']:>6} accepted {b['quarantined']:>5} rejected "
                 f"{b['duplicate']:>5} duplicate  amount {b['amount']:>28}  cumulative {b['cumulative_amount']}")
    if owed is None:
        out.line("claimed and claimable: give the RewardDistributor you trust (--distributor ADDR or --deployment FILE)")
    else:
        out.line(f"claimed {result['claimed']}, claimable now {result['claimable']} (under the root of batch "
                 f"{result['published_seq']})")
    out.result(result)
    return EXIT_OK


def cmd_claim(args: argparse.Namespace, out: Output) -> int:
    from pipeline import claims, stages, verify

    settings = config.load()
    spec = stages.dataset_for(settings, args.dataset)
    _, trust = _trust(args, settings, args.dataset, ("RewardDistributor",), "claim")
    chain = verify.connect(args.rpc or str(settings.rpc_url), settings.contributor())
    result = claims.claim(stages.lake_for(settings), spec, chain, str(trust.distributor), args.contributor)
    if result["tx_hash"] is None:
        out.line(f"nothing to claim: {args.contributor} has been paid its cumulative {result['cumulative_amount']} "
                 f"{result['unit']} of {args.dataset}; balance {result['balance']}")
    else:
        out.line(f"claimed {result['claimed_now']} {result['unit']} for {args.contributor} (cumulative "
                 f"{result['cumulative_amount']} under the root of batch {result['seq']}) in tx {result['tx_hash']}; "
                 f"balance now {result['balance']}")
    out.result(result)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, out: Output) -> int:
    from pipeline import stages
    from pipeline.lake.batch import BatchFiles, committed_seqs

    settings = config.load()
    stages.dataset_for(settings, args.dataset)
    lake = stages.lake_for(settings)
    seqs = [args.batch] if args.batch is not None else committed_seqs(lake, args.dataset)
    rejected = []
    for seq in seqs:
        files = BatchFiles(lake, args.dataset, seq)
        if not files.committed():
            raise NotFound(f"{args.dataset} has no batch {seq}")
        rejected += [{"seq": seq, **row} for row in files.rejections(args.contributor)]
    for r in rejected:
        out.line(f"batch {r['seq']:>6}  {r['source_key']}:{r['line']}  {r['contributor'] or '-'}  {r['reason']}: "
                 f"{r['detail']}")
    out.line(f"{len(rejected)} rejected or duplicate record(s)"
             + (f" of {args.contributor}" if args.contributor else "") + f" in {len(seqs)} batch(es)")
    out.result({"dataset": args.dataset, "rejections": rejected})
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from pipeline import devnet, stages

    home = config.load().home
    dataset = "instructions"
    started = False
    try:
        settings, deployment, started = stages.bring_up(out.progress)
        quiet = Output(as_json=False, quiet=out.quiet)
        samples = sorted((settings.samples_dir / dataset).glob("*.jsonl*"))
        cmd_contribute(argparse.Namespace(files=[str(p) for p in samples], dataset=dataset, sign=False), quiet)
        report = stages.run(settings, dataset, out.progress)
        signed = _demo_signed(settings, out)
        summary = stages.batch_summary(settings, dataset)
        receipt_path = settings.home / f"receipt-{dataset}-{summary['seq']:06d}-{summary['contributor']}.json"
        receipt_path.write_text(json.dumps(summary["receipt"], indent=1))
        code = cmd_verify(argparse.Namespace(
            receipts=[str(receipt_path)], root=None, tree_size=None, rpc=None, dataset=dataset, deployment=None,
            contract=deployment["BatchAnchor"], distributor=deployment["RewardDistributor"]), quiet)
        _print_demo(dataset, summary, deployment, bool(report.committed), receipt_path, code == EXIT_OK, signed)
        return code
    finally:
        if started:
            devnet.devnet_down(home)


def _demo_signed(settings: config.Settings, out: Output) -> str:
    """The demo's signed contribution: the critiques sample signed with the devnet contributor's
    key (a copy under ANCHORLAKE_HOME gets the .sig.json), run; a line saying what was accepted."""
    import shutil

    from pipeline import stages

    folder = settings.home / "signed"
    folder.mkdir(parents=True, exist_ok=True)
    copies = [Path(shutil.copy(p, folder)) for p in sorted((settings.samples_dir / "critiques").glob("*.jsonl"))]
    signer = stages.contribute(settings, "critiques", copies, sign=True)[0]["signer"]
    stages.run(settings, "critiques", out.progress)
    m = stages.batch_summary(settings, "critiques")["manifest"]
    c = m.data["counts"]
    return (f"critiques batch {m.seq}: {c['accepted']} rows signed by {signer} accepted, {c['quarantined']} "
            f"quarantined; paid {m.rewards['total']} ({_terms(m.rewards)})")


def _print_demo(dataset: str, s: dict[str, Any], deployment: dict[str, Any], now: bool, receipt: Path,
                verified: bool, signed: str) -> None:
    m, anchor = s["manifest"], s["anchor"]
    c, r = m.data["counts"], m.data["rewards"]
    print()
    print(f"dataset      {dataset} (batch {m.seq}{', committed now' if now else ', committed earlier'})")
    print(f"records      {c['input']} in: {c['accepted']} accepted, {c['quarantined']} quarantined, {c['duplicate']} duplicate")
    print(f"merkle root  {m.root} over {m.tree_size} rows")
    print(f"anchor       tx {anchor['tx_hash']} in block {anchor['block_number']} on chain {anchor['chain_id']}"
          f" (BatchAnchor {deployment['BatchAnchor']})")
    print(f"rewards      {_terms(r)}, {s['rewarded']} contributors in the ledger, root 0x{r['root']}")
    print(f"receipt      {receipt}")
    print(f"signed       {signed}")
    if verified:
        print(f"verified     the receipt of {s['contributor']} verified against the chain")


# --- entry point --------------------------------------------------------------------------


def _operator_parsers(sub: Any) -> None:
    """The commands that run the pipeline: up, down, contribute, run, commit, check, status."""
    up = sub.add_parser("up", help="start the embedded default (devnet, contracts) or deploy to ANCHORLAKE_RPC_URL")
    up.add_argument("-o", "--output", metavar="FILE",
                    help="also write the deployment (deployments/<chain_id>.json) that users verify against")
    down = sub.add_parser("down", help="stop the embedded devnet")
    down.add_argument("--purge", action="store_true", help="also delete the local lake and chain state")
    c = sub.add_parser("contribute", help="drop contribution files into the lake")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--dataset", required=True, type=_name)
    c.add_argument("--sign", action="store_true",
                   help="sign each file with ANCHORLAKE_CONTRIBUTOR_KEY (EIP-191), writing FILE.sig.json beside it")
    r = sub.add_parser("run", help="one batch now, every stage")
    r.add_argument("--dataset", required=True, type=_name)
    cm = sub.add_parser("commit", help="commit one staged batch (what `run` does after staging; a Ray job runs it)")
    cm.add_argument("--dataset", required=True, type=_name)
    cm.add_argument("--batch", required=True, type=_seq)
    ck = sub.add_parser("check", help="validate dataset declarations and suites without data")
    ck.add_argument("--dataset", type=_name)
    s = sub.add_parser("status", help="batches and their anchoring")
    s.add_argument("--dataset", type=_name)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="anchorlake", description="Verifiable AI-training data lake: ingest, validate, anchor, reward.")
    for flag, text in GLOBAL_FLAGS:
        p.add_argument(flag, action="store_true", help=text)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Command)
    _operator_parsers(sub)
    rc = sub.add_parser("receipt", help="a contributor's receipt for a batch")
    rc.add_argument("--dataset", required=True, type=_name)
    rc.add_argument("--batch", required=True, type=_seq)
    rc.add_argument("--contributor", required=True, type=_address)
    rc.add_argument("-o", "--output")
    pf = sub.add_parser("proof", help="a leaf's inclusion proof or a range proof, served from the stored tree")
    pf.add_argument("--dataset", required=True, type=_name)
    pf.add_argument("--batch", required=True, type=_seq)
    which = pf.add_mutually_exclusive_group(required=True)
    which.add_argument("--leaf", type=_seq, help="the RFC 9162 inclusion path of this leaf")
    which.add_argument("--range", type=_seq, nargs=2, metavar=("START", "END"),
                       help="the range proof of leaves [START, END) (SPEC §13.3)")
    v = sub.add_parser("verify", help="verify receipts against the chain or a given root")
    v.add_argument("receipts", nargs="+", metavar="RECEIPT", help="receipt files (JSON, or .gz of it), a batch's receipts (JSON Lines: .jsonl or .jsonl.gz), or history proofs")
    v.add_argument("--dataset", type=_name, help="the dataset you are verifying (its id is computed, never read from the receipt)")
    _trust_flags(v)
    v.add_argument("--root", help="verify offline against this root (hex); needs --tree-size")
    v.add_argument("--tree-size", type=_seq, help="with --root: the tree size you trust")
    au = sub.add_parser("audit", help="every batch: files, manifest chain, rows, anchors and rewards roots on chain")
    au.add_argument("--dataset", required=True, type=_name)
    _trust_flags(au)
    tb = sub.add_parser("table", help="register anchored batches in the dataset's Iceberg table (pyiceberg add_files)")
    tb.add_argument("--dataset", required=True, type=_name)
    tb.add_argument("--rebuild", action="store_true", help="drop the table and register every anchored batch again")
    hi = sub.add_parser("history", help="RFC 9162 consistency proof between two batches' history roots")
    hi.add_argument("--dataset", required=True, type=_name)
    hi.add_argument("--from", dest="first", type=_seq, help="the earlier batch (default 1)")
    hi.add_argument("--to", dest="last", type=_seq, help="the later batch (default the last committed)")
    hi.add_argument("-o", "--output", metavar="FILE", help="write the proof (anchorlake.history/1) for others to verify")
    _trust_flags(hi)
    _pull_parser(sub.add_parser("pull", help="download validated Parquet and check it is what was anchored"))
    rw = sub.add_parser("rewards", help="a batch's reward split, or a contributor's statement across batches")
    rw.add_argument("--dataset", required=True, type=_name)
    rw.add_argument("--batch", type=_seq)
    rw.add_argument("--contributor", type=_address, help="the statement of one contributor across every batch")
    rw.add_argument("--verify", action="store_true", help="check the rewards root on chain")
    _trust_flags(rw)
    cl = sub.add_parser("claim", help="claim a contributor's rewards (ANCHORLAKE_CONTRIBUTOR_KEY pays the gas)")
    cl.add_argument("--dataset", required=True, type=_name)
    cl.add_argument("--contributor", required=True, type=_address, help="who is paid (the tokens go to this address)")
    _trust_flags(cl)
    ex = sub.add_parser("explain", help="rejected and duplicate records, with their reasons")
    ex.add_argument("--dataset", required=True, type=_name)
    ex.add_argument("--batch", type=_seq)
    ex.add_argument("--contributor", type=_address)
    sub.add_parser("demo", help="up, sample contributions, run, receipt, verify")
    return p


def _pull_parser(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("--dataset", required=True, type=_name)
    pl.add_argument("--batch", type=_seq)
    pl.add_argument("--dest", required=True)
    pl.add_argument("--no-verify", action="store_true")
    _trust_flags(pl)


def _trust_flags(parser: argparse.ArgumentParser) -> None:
    """What a check is anchored to, given by the user (SPEC §13.4): never the lake's record."""
    parser.add_argument("--rpc", help="the chain's JSON-RPC URL (default ANCHORLAKE_RPC_URL)")
    parser.add_argument("--contract", help="the BatchAnchor address you trust")
    parser.add_argument("--distributor", help="the RewardDistributor address you trust (checks rewards)")
    parser.add_argument("--deployment", metavar="FILE", help="a deployments/<chain_id>.json you trust, for the addresses")


def _terms(rewards: dict[str, Any]) -> str:
    """A manifest's reward rule in words: the pool of proportional/1 or the rate of per_unit/1."""
    weight = rewards.get("weight", "rows")
    if "rate" in rewards:
        return f"{rewards['rate']} {rewards['unit']} per {'row' if weight == 'rows' else 'character'} (per_unit/1)"
    return f"pool {rewards['pool']} {rewards['unit']} split by {weight} (proportional/1)"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must name a dataset, got an empty name")
    return text


def _seq(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _address(text: str) -> str:
    lower = text.lower()
    if len(lower) != 42 or not lower.startswith("0x") or any(ch not in "0123456789abcdef" for ch in lower[2:]):
        raise argparse.ArgumentTypeError(f"contributor must be 0x and 40 hex digits, got {text!r}")
    return lower


COMMANDS = {"up": cmd_up, "down": cmd_down, "contribute": cmd_contribute, "run": cmd_run, "commit": cmd_commit,
            "status": cmd_status,
            "check": cmd_check, "receipt": cmd_receipt, "proof": cmd_proof, "verify": cmd_verify, "audit": cmd_audit,
            "pull": cmd_pull, "history": cmd_history, "table": cmd_table, "rewards": cmd_rewards, "claim": cmd_claim, "explain": cmd_explain, "demo": cmd_demo}


# A path that is wrong (exit 2) rather than a device failing (exit 3, retrying may help).
_PATH_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENAMETOOLONG,
                errno.ELOOP, errno.EEXIST}


def _redacting(record: logging.LogRecord) -> bool:
    """Log lines carry no credentials or API keys of URLs (web3 and botocore log them)."""
    record.msg, record.args = redact(record.getMessage()), None
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redacting)
    out = Output(as_json=args.json, quiet=args.quiet)
    try:
        return COMMANDS[args.command](args, out)
    except AnchorlakeError as e:
        # One line; a service that failed to start adds its log tail below it.
        message = redact(f"anchorlake: {e}")
        print(message if e.exit_code == EXIT_SERVICE else message.splitlines()[0], file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("anchorlake: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `anchorlake proof … | head`: the reader has what it wanted; leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:  # a path it cannot use: a lake folder, --dest, a file it was given
        where = f"{e.filename}: " if e.filename else ""
        print(redact(f"anchorlake: {where}{e.strerror or type(e).__name__}"), file=sys.stderr)
        return EXIT_USAGE if e.errno in _PATH_ERRORS else EXIT_SERVICE
    except Exception as e:  # a bug, not bad input: one line, the traceback with --debug
        if args.debug:
            raise
        if type(e).__name__ == "Web3RPCError":  # the node refused a call (its text is scrubbed of the URL)
            print(redact(f"anchorlake: the chain RPC answered with an error: {e}").splitlines()[0], file=sys.stderr)
            return EXIT_SERVICE
        first = (str(e).splitlines() or [""])[0]
        print(redact(f"anchorlake: internal error: {type(e).__name__}: {first} (run with --debug for details)"),
              file=sys.stderr)
        return EXIT_CHECK


def command() -> NoReturn:
    """The `anchorlake` command: main(), its output flushed, then an immediate exit. The exit skips
    the C++ libraries' static destructors: Arrow's thread pools, torn down while a thread of theirs
    still ran, aborted a process now and then after its work was done (exit 134, "terminate called
    without an active exception"). Nothing of anchorlake's runs at interpreter exit."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    command()
