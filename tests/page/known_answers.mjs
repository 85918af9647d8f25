// The page's own hashing, for tests/test_page.py to compare with independent implementations
// (eth_hash's Keccak-256, the Python rewards tree):
//
//   node tests/page/known_answers.mjs INPUT.json
//   INPUT:  {"keccak": [hex, ...], "leaves": [[address, decimal], ...],
//            "proofs": [{"account", "amount", "proof": [0x hex, ...]}, ...], "datasets": [name, ...]}
//   OUTPUT: {"keccak": [hex, ...], "leaves": [hex, ...], "roots": [hex, ...], "datasets": [0x hex, ...]}
import { readFileSync } from "node:fs";
import { datasetId, hex, keccak256, processProof, rewardLeaf, unhex } from "../../web/verify.mjs";

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
process.stdout.write(JSON.stringify({
  keccak: input.keccak.map((h) => hex(keccak256(unhex(h)))),
  leaves: input.leaves.map(([account, amount]) => hex(rewardLeaf(account, BigInt(amount)))),
  roots: input.proofs.map((p) => hex(processProof(rewardLeaf(p.account, BigInt(p.amount)), p.proof.map(unhex)))),
  datasets: input.datasets.map(datasetId),
}));
