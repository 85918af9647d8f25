"""Compile the contracts from source with solc (npm `solc`), caching the artifact.

The artifact `anchoring/build/contracts.json` records the SHA-256 of the sources it came from;
a stale or missing artifact is rebuilt. `python -m anchoring.compile` builds it (make does).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pipeline.errors import BadInput, ServiceUnavailable

HERE = Path(__file__).resolve().parent
ARTIFACT_FORMAT = "anchorlake.contracts/2"  # /2: runtime code with its immutables, to check deployments
REPO = HERE.parent
CONTRACTS = ("BatchAnchor", "RewardDistributor", "RewardToken")
ARTIFACT = HERE / "build" / "contracts.json"
SOLC_VERSION = "0.8.37"


def _sources() -> dict[str, str]:
    return {f"{name}.sol": (HERE / "contracts" / f"{name}.sol").read_text() for name in CONTRACTS}


def sources_sha256() -> str:
    return hashlib.sha256(json.dumps(sorted(_sources().items())).encode()).hexdigest()


def compile_sources() -> dict[str, Any]:
    """Run solcjs over the contracts; return {name: {abi, bytecode}}."""
    node = shutil.which("node")
    if node is None:
        raise ServiceUnavailable("node is not installed; it runs the Solidity compiler (npm solc)")
    if not (REPO / "node_modules" / "solc").is_dir():
        raise BadInput("node_modules/solc is missing: run `make setup` (npm ci) first")
    request = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in _sources().items()},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "evmVersion": "cancun",
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object",
                                            "evm.deployedBytecode.immutableReferences"]}},
        },
    }
    proc = subprocess.run([node, str(HERE / "solc.cjs")], input=json.dumps(request), capture_output=True,
                          text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise BadInput(f"solc failed: {proc.stderr.strip()[-500:]}")
    output = json.loads(proc.stdout)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BadInput("solc: " + "; ".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    contracts = {}
    for name in CONTRACTS:
        out = output["contracts"][f"{name}.sol"][name]
        contracts[name] = {
            "abi": out["abi"],
            "bytecode": "0x" + out["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + out["evm"]["deployedBytecode"]["object"],
            # (start, length) of each immutable in the runtime code: filled in at deployment
            "immutables": sorted((r["start"], r["length"]) for refs in
                                 out["evm"]["deployedBytecode"].get("immutableReferences", {}).values() for r in refs),
        }
    return contracts


def build(force: bool = False) -> dict[str, Any]:
    """Return the artifact, compiling if it is missing or its sources changed."""
    digest = sources_sha256()
    if not force and ARTIFACT.is_file():
        try:
            artifact = json.loads(ARTIFACT.read_text())
            if artifact.get("sources_sha256") == digest and artifact.get("format") == ARTIFACT_FORMAT:
                return dict(artifact["contracts"])
        except ValueError:
            pass
    contracts = compile_sources()
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    tmp = ARTIFACT.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": ARTIFACT_FORMAT, "solc": SOLC_VERSION,
                               "sources_sha256": digest, "contracts": contracts}, indent=1))
    tmp.replace(ARTIFACT)
    return contracts


if __name__ == "__main__":
    built = build(force=True)
    print(f"compiled {', '.join(built)} -> {ARTIFACT.relative_to(REPO)}")
