// The page's range-proof folding (web/verify.mjs rootFromRange, rangeProofLength) over cases that
// tests/test_range_agreement.py built with the Python reference (pipeline/core/merkle.py):
//
//   node tests/page/range_agreement.mjs CASES.json
//   CASES:  [{"size", "start", "end", "leaves": [hex, ...], "proof": [hex, ...]}, ...]
//   OUTPUT: [{"root": hex | null, "length": int | null}, ...]   one per case, in order
//
// WebCrypto digests are asynchronous and slow one at a time in Node: cases run a few dozen at once.
import { readFileSync } from "node:fs";
import { hex, rangeProofLength, rootFromRange, unhex } from "../../web/verify.mjs";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = new Array(cases.length);
const AT_ONCE = 48;
for (let first = 0; first < cases.length; first += AT_ONCE) {
  await Promise.all(cases.slice(first, first + AT_ONCE).map(async (c, i) => {
    const root = await rootFromRange(c.size, c.start, c.end, c.leaves.map(unhex), c.proof.map(unhex));
    out[first + i] = { root: root === null ? null : hex(root), length: rangeProofLength(c.size, c.start, c.end) };
  }));
}
process.stdout.write(JSON.stringify(out));
