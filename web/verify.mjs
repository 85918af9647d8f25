// anchorlake receipt verifier, independent of the Python code (SPEC §4, §5, §7, §8, §13.3, §13.4).
//
// Trust anchors come from the verifying user, never from the receipt: the chain RPC, the dataset
// name, the BatchAnchor and RewardDistributor addresses (typed in, or from a deployments file the
// user picks), or offline a root and tree size. The receipt's rows are hashed here (RFC 8785 JCS,
// SHA-256 leaves) and folded to a root: an anchorlake.receipt/2 holds the contributor's rows as one
// leaf range [start, end) with one range proof (SPEC §13.3: the hashes of the maximal subtrees
// disjoint from the range, left to right), an anchorlake.receipt/1 (still read) one RFC 9162
// inclusion path per row. The root, tree size and manifest hash are compared with what the user's
// BatchAnchor holds for keccak256(dataset name) (a proof alone does not bind the tree size); the
// reward's cumulative amount is folded (OpenZeppelin StandardMerkleTree leaf, sorted-pair keccak)
// to the user's RewardDistributor.rootAt(datasetId, seq), and the batch amount to the previous
// batch's (when the receipt shows none after batch 0, the batch amount is reported as not checked:
// a rewards tree cannot prove an address absent). A receipt's rows must be distinct leaves: in /2
// each row is the leaf at its position in the range, in /1 no leaf index may repeat.
//
// Runs in a browser (verify.html) and in Node 20 (verify-cli.mjs); no dependencies: SHA-256 is
// WebCrypto's, Keccak-256 is below.

const enc = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// Errors: each knows the CLI exit code it maps to (SPEC §10).

/** Base of every error the verifier raises on purpose; `exitCode` is the CLI's. */
export class VerifyError extends Error {
  get exitCode() { return 1; }
}
/** The receipt, a deployments file or a trust input is malformed or missing (exit 2). */
export class BadInput extends VerifyError {
  get exitCode() { return 2; }
}
/** The chain RPC cannot be reached or does not answer JSON-RPC (exit 3). */
export class RpcFailure extends VerifyError {
  get exitCode() { return 3; }
}

// ---------------------------------------------------------------------------------------------
// Bytes

export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** Bytes of a hex string (with or without 0x). Requires an even number of hex digits. */
export function unhex(text) {
  const digits = text.replace(/^0x/i, "");
  if (!/^([0-9a-fA-F]{2})*$/.test(digits)) throw new BadInput(`not hex: ${JSON.stringify(text.slice(0, 80))}`);
  return Uint8Array.from(digits.match(/../g) || [], (h) => parseInt(h, 16));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** A 32-byte big-endian word of a non-negative BigInt. Requires 0 <= n < 2^256. */
function word(n) {
  return unhex(n.toString(16).padStart(64, "0"));
}

/** "1 row", "5 rows": a count with its noun. */
export const count = (n, noun, plural = noun + "s") => `${n} ${n === 1 ? noun : plural}`;

/** "47ce0fa4…" — enough of a hash to recognise it. */
const short = (h) => h.replace(/^0x/, "").slice(0, 8) + "…";
const short0x = (h) => "0x" + short(h);

// ---------------------------------------------------------------------------------------------
// Hashes

async function sha256(...parts) {
  return new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", concat(...parts)));
}

// Keccak-f[1600] on 25 lanes of 64 bits, each held as two 32-bit halves (lo at 2i, hi at 2i+1).
// Round constants and rotation offsets are generated from their definitions (FIPS 202 §3.2)
// rather than typed in: a typo there would still pass for some inputs.
const KECCAK_RC = (() => {
  let r = 1;
  const bit = () => { const out = r & 1; r <<= 1; if (r & 0x100) r ^= 0x171; return out; };
  const rc = new Uint32Array(48);
  for (let round = 0; round < 24; round++) {
    for (let j = 0; j < 7; j++) {
      if (bit()) {
        const position = (1 << j) - 1;
        rc[2 * round + (position >= 32 ? 1 : 0)] |= 1 << (position % 32);
      }
    }
  }
  return rc;
})();
const KECCAK_ROT = (() => {
  const rot = new Array(25).fill(0);
  let x = 1, y = 0;
  for (let t = 0; t < 24; t++) {
    rot[x + 5 * y] = (((t + 1) * (t + 2)) / 2) % 64;
    [x, y] = [y, (2 * x + 3 * y) % 5];
  }
  return rot;
})();

function keccakF(s) {
  const c = new Uint32Array(10), b = new Uint32Array(50);
  for (let round = 0; round < 24; round++) {
    for (let x = 0; x < 5; x++) {
      c[2 * x] = s[2 * x] ^ s[2 * x + 10] ^ s[2 * x + 20] ^ s[2 * x + 30] ^ s[2 * x + 40];
      c[2 * x + 1] = s[2 * x + 1] ^ s[2 * x + 11] ^ s[2 * x + 21] ^ s[2 * x + 31] ^ s[2 * x + 41];
    }
    for (let x = 0; x < 5; x++) {
      const l = (x + 4) % 5, r = (x + 1) % 5;
      const dLo = c[2 * l] ^ ((c[2 * r] << 1) | (c[2 * r + 1] >>> 31));
      const dHi = c[2 * l + 1] ^ ((c[2 * r + 1] << 1) | (c[2 * r] >>> 31));
      for (let y = 0; y < 25; y += 5) { s[2 * (x + y)] ^= dLo; s[2 * (x + y) + 1] ^= dHi; }
    }
    for (let x = 0; x < 5; x++) {
      for (let y = 0; y < 5; y++) {
        const from = x + 5 * y, to = y + 5 * ((2 * x + 3 * y) % 5), n = KECCAK_ROT[from];
        let lo = s[2 * from], hi = s[2 * from + 1];
        if (n >= 32) [lo, hi] = [hi, lo];
        const k = n % 32;
        if (k) [lo, hi] = [(lo << k) | (hi >>> (32 - k)), (hi << k) | (lo >>> (32 - k))];
        b[2 * to] = lo; b[2 * to + 1] = hi;
      }
    }
    for (let y = 0; y < 25; y += 5) {
      for (let x = 0; x < 5; x++) {
        const i = x + y, i1 = ((x + 1) % 5) + y, i2 = ((x + 2) % 5) + y;
        s[2 * i] = b[2 * i] ^ (~b[2 * i1] & b[2 * i2]);
        s[2 * i + 1] = b[2 * i + 1] ^ (~b[2 * i1 + 1] & b[2 * i2 + 1]);
      }
    }
    s[0] ^= KECCAK_RC[2 * round]; s[1] ^= KECCAK_RC[2 * round + 1];
  }
}

/** Keccak-256 as Ethereum uses it (original Keccak padding 0x01, not SHA3-256's 0x06). */
export function keccak256(data) {
  const rate = 136, state = new Uint32Array(50);
  const padded = new Uint8Array((Math.floor(data.length / rate) + 1) * rate);
  padded.set(data);
  padded[data.length] ^= 0x01;
  padded[padded.length - 1] ^= 0x80;
  for (let block = 0; block < padded.length; block += rate) {
    for (let i = 0; i < rate; i += 4) {
      const v = padded[block + i] | (padded[block + i + 1] << 8) | (padded[block + i + 2] << 16) | (padded[block + i + 3] << 24);
      state[i >> 2] ^= v;
    }
    keccakF(state);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = (state[i >> 2] >>> (8 * (i % 4))) & 0xff;
  return out;
}

/** datasetId = keccak256(utf8 bytes of the dataset name) (SPEC §8), as 0x hex. */
export function datasetId(name) {
  return "0x" + hex(keccak256(enc.encode(name)));
}

// ---------------------------------------------------------------------------------------------
// Rows: RFC 8785 leaves, RFC 9162 inclusion (SPEC §4, §5) and range proofs (SPEC §13.3)

/** RFC 8785: JSON.stringify already gives ECMAScript numbers and JCS string escapes; sort keys by UTF-16. */
export function canonicalize(value) {
  if (value === null || typeof value !== "object") {
    if (typeof value === "number" && !Number.isFinite(value)) throw new BadInput("a record holds a number JSON cannot carry");
    if (typeof value === "string" && value.isWellFormed && !value.isWellFormed()) {
      throw new BadInput("a record holds a string with a lone surrogate: it has no UTF-8 form");
    }
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(canonicalize).join(",") + "]";
  const keys = Object.keys(value).sort(); // UTF-16 code unit order, as RFC 8785 §3.2.3 asks
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonicalize(value[k])).join(",") + "}";
}

/** Leaf hash of a row's record: SHA-256(0x00 ‖ JCS bytes). */
export async function leafHash(record) {
  return sha256(Uint8Array.of(0), enc.encode(canonicalize(record)));
}

/** RFC 9162 §2.1.3.2: the root a leaf and its path imply, or null if the path does not fit.
 *  Requires 0 <= index < size; `path` leaf level first. */
export async function rootFromInclusion(index, size, leaf, path) {
  if (!(index >= 0 && index < size)) return null;
  let fn = BigInt(index), sn = BigInt(size - 1), r = leaf;
  for (const p of path) {
    if (sn === 0n) return null;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n ? r : null;
}

/** Length of the RFC 9162 inclusion path of leaf `index` in a tree of `size` leaves. */
export function pathLength(index, size) {
  let length = 0, i = BigInt(index), last = BigInt(size - 1);
  while (last > 0n) {
    if ((i ^ 1n) <= last) length++;
    i >>= 1n; last >>= 1n;
  }
  return length;
}

/** RFC 9162's split of a subtree of `size` leaves: the largest power of two smaller than size. Requires size >= 2. */
function split(size) {
  let k = 1;
  while (k * 2 < size) k *= 2;
  return k;
}

/** Whether [start, end) is a non-empty range of leaves of a tree of `size` (all safe integers). */
const isRange = (size, start, end) =>
  [size, start, end].every(Number.isSafeInteger) && 0 <= start && start < end && end <= size;

/** RFC 9162 §2.1.1 root over leaf hashes in order (SHA-256 of nothing for none). A node without
 *  a right sibling is carried up unchanged, which is the split at the largest power of two below n. */
export async function merkleRoot(leafHashes) {
  if (leafHashes.length === 0) return sha256();
  let level = leafHashes;
  while (level.length > 1) {
    const pairs = [];
    for (let i = 0; i + 1 < level.length; i += 2) pairs.push(sha256(Uint8Array.of(1), level[i], level[i + 1]));
    const next = await Promise.all(pairs); // WebCrypto digests are asynchronous: let them run together
    if (level.length % 2) next.push(level[level.length - 1]);
    level = next;
  }
  return level[0];
}

/** How many hashes the range proof of leaves [start, end) in a tree of `size` has (SPEC §13.3),
 *  or null when [start, end) is not a non-empty range of that tree. Requires safe integers. */
export function rangeProofLength(size, start, end) {
  if (!isRange(size, start, end)) return null;
  const walk = (lo, hi) => {
    if (hi <= start || end <= lo) return 1;
    if (start <= lo && hi <= end) return 0;
    const k = split(hi - lo);
    return walk(lo, lo + k) + walk(lo + k, hi);
  };
  return walk(0, size);
}

/**
 * SPEC §13.3: the root that the leaf hashes of [start, end) and their range proof imply, or null
 * when the proof does not fit: [start, end) is not a non-empty range of a tree of `size`, there is
 * not one leaf hash per position of it, or the proof does not have exactly rangeProofLength hashes
 * (so it is always consumed exactly). Subtrees disjoint from the range take the next proof hash,
 * subtrees inside it are the RFC 9162 root of their leaves, the others split at RFC 9162's k.
 * `leafHashes` and `proof` are lists of 32-byte Uint8Arrays, `proof` left to right.
 */
export async function rootFromRange(size, start, end, leafHashes, proof) {
  if (!isRange(size, start, end) || leafHashes.length !== end - start) return null;
  if (proof.length !== rangeProofLength(size, start, end)) return null;
  let next = 0;
  const walk = async (lo, hi) => {
    if (hi <= start || end <= lo) return proof[next++];
    if (start <= lo && hi <= end) return merkleRoot(leafHashes.slice(lo - start, hi - start));
    const k = split(hi - lo);
    const left = await walk(lo, lo + k);
    return sha256(Uint8Array.of(1), left, await walk(lo + k, hi));
  };
  const root = await walk(0, size);
  return next === proof.length ? root : null;
}

// ---------------------------------------------------------------------------------------------
// Rewards: OpenZeppelin StandardMerkleTree leaf and MerkleProof.processProof (SPEC §8)

/** keccak256(keccak256(abi.encode(address account, uint256 amount))). Requires 0 <= amount < 2^256. */
export function rewardLeaf(account, amount) {
  return keccak256(keccak256(concat(new Uint8Array(12), unhex(account), word(amount))));
}

/** MerkleProof.processProof: fold `leaf` with commutative keccak(min ‖ max) over `proof`. */
export function processProof(leaf, proof) {
  return proof.reduce((node, sibling) =>
    compareBytes(node, sibling) < 0 ? keccak256(concat(node, sibling)) : keccak256(concat(sibling, node)), leaf);
}

// ---------------------------------------------------------------------------------------------
// Inputs: the receipt, a deployments file, what the user trusts. Each reader raises BadInput
// naming the source and the field.

const HEX64 = /^[0-9a-f]{64}$/;
const HEX32_0X = /^0x[0-9a-fA-F]{64}$/;
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const DECIMAL = /^(0|[1-9][0-9]*)$/;
const UINT256_LIMIT = 1n << 256n;
/** The receipt format written now (SPEC §13.4): one leaf range and its range proof. */
export const RECEIPT_FORMAT = "anchorlake.receipt/2";
/** The earlier receipt format, still read (SPEC §7): one inclusion path per row. */
export const RECEIPT_FORMAT_V1 = "anchorlake.receipt/1";
export const RECEIPT_FORMATS = [RECEIPT_FORMAT, RECEIPT_FORMAT_V1];
export const DEPLOYMENT_FORMAT = "anchorlake.deployment/1";

const isInt = (v) => Number.isSafeInteger(v);

function parseJson(text, source) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new BadInput(`${source}: not JSON (${e.message})`);
  }
}

function amount(source, field, value) {
  if (typeof value !== "string" || !DECIMAL.test(value) || BigInt(value) >= UINT256_LIMIT) {
    throw new BadInput(`${source}: ${field} must be a decimal string of a uint256`);
  }
  return BigInt(value);
}

function proofList(source, field, value) {
  if (!Array.isArray(value) || !value.every((p) => typeof p === "string" && HEX32_0X.test(p))) {
    throw new BadInput(`${source}: ${field} must be a list of 0x-prefixed 32-byte hashes`);
  }
  return value.map(unhex);
}

const leaves = (n) => count(n, "leaf", "leaves");

const isRecord = (row) => row !== null && typeof row === "object" && !Array.isArray(row) &&
  row.record !== null && typeof row.record === "object" && !Array.isArray(row.record);

/** receipt/2 (as Python's _check_range): a range of the tree, one record per leaf of it, a proof of the right length. */
function validateRange(data, source) {
  const span = data.range;
  const size = data.tree_size;
  if (span === null || typeof span !== "object" || Array.isArray(span) || !isRange(size, span.start, span.end)) {
    throw new BadInput(`${source}: range must be {start, end} with 0 <= start < end <= tree size ${size}`);
  }
  const { start, end } = span, within = `[${start}, ${end})`;
  if (data.rows.length !== end - start) {
    throw new BadInput(`${source}: rows holds ${count(data.rows.length, "row")}, the range ${within} holds ${leaves(end - start)}`);
  }
  data.rows.forEach((row, n) => {
    if (!isRecord(row)) throw new BadInput(`${source}: rows[${n}].record must be an object`);
  });
  if (!Array.isArray(data.proof) || !data.proof.every((p) => typeof p === "string" && HEX64.test(p))) {
    throw new BadInput(`${source}: proof must be a list of 64-hex-character hashes`);
  }
  const expected = rangeProofLength(size, start, end);
  if (data.proof.length !== expected) {
    throw new BadInput(`${source}: proof has ${count(data.proof.length, "hash", "hashes")}, the proof of ${within} ` +
                       `in a tree of ${leaves(size)} has ${expected}`);
  }
}

/** receipt/1: each row a record, a leaf index in the tree and an inclusion path of the right length. */
function validatePaths(data, source) {
  data.rows.forEach((row, n) => {
    const where = `${source}: rows[${n}]`;
    if (!isRecord(row)) throw new BadInput(`${where}.record must be an object`);
    if (!isInt(row.leaf_index) || row.leaf_index < 0 || row.leaf_index >= data.tree_size) {
      throw new BadInput(`${where}.leaf_index must be an integer in [0, ${data.tree_size})`);
    }
    if (!Array.isArray(row.path) || !row.path.every((p) => typeof p === "string" && HEX64.test(p))) {
      throw new BadInput(`${where}.path must be a list of 64-hex-character hashes`);
    }
    const expected = pathLength(row.leaf_index, data.tree_size);
    if (row.path.length !== expected) {
      throw new BadInput(`${where}.path has ${count(row.path.length, "hash", "hashes")}, a proof in this tree has ${expected}`);
    }
  });
}

/** Validate an anchorlake.receipt/2 or /1 object (or its JSON text); returns it. Raises BadInput naming the field. */
export function parseReceipt(input, source = "receipt") {
  const data = typeof input === "string" ? parseJson(input, source) : input;
  if (data === null || typeof data !== "object" || Array.isArray(data)) throw new BadInput(`${source}: not a JSON object`);
  if (!RECEIPT_FORMATS.includes(data.format)) {
    throw new BadInput(`${source}: format: expected ${RECEIPT_FORMATS.join(" or ")}, got ${JSON.stringify(data.format ?? null)}`);
  }
  for (const [key, ok, what] of [["dataset", (v) => typeof v === "string" && v !== "", "a dataset name"],
    ["seq", (v) => isInt(v) && v >= 0, "an integer >= 0"], ["tree_size", (v) => isInt(v) && v >= 0, "an integer >= 0"],
    ["contributor", (v) => typeof v === "string" && /^0x[0-9a-f]{40}$/.test(v), "0x and 40 lowercase hex digits"],
    ["root", (v) => typeof v === "string" && HEX64.test(v), "64 lowercase hex characters"],
    ["manifest_sha256", (v) => typeof v === "string" && HEX64.test(v), "64 lowercase hex characters"],
    ["rows", (v) => Array.isArray(v) && v.length > 0, "a list of at least one row (a receipt proves rows)"]]) {
    if (!ok(data[key])) throw new BadInput(`${source}: ${key} must be ${what}`);
  }
  if (data.format === RECEIPT_FORMAT) validateRange(data, source);
  else validatePaths(data, source);
  const anchor = data.anchor ?? null;
  if (anchor !== null && (typeof anchor !== "object" || !isInt(anchor.chain_id))) {
    throw new BadInput(`${source}: anchor must be null or an object with chain_id`);
  }
  const reward = data.reward ?? null;
  if (reward !== null) {
    if (typeof reward !== "object" || Array.isArray(reward)) throw new BadInput(`${source}: reward must be an object or null`);
    amount(source, "reward.amount", reward.amount);
    amount(source, "reward.cumulative_amount", reward.cumulative_amount);
    proofList(source, "reward.proof", reward.proof);
    for (const key of ["root"]) {
      if (reward[key] != null && !(typeof reward[key] === "string" && HEX32_0X.test(reward[key]))) {
        throw new BadInput(`${source}: reward.${key} must be a 0x-prefixed 32-byte hash`);
      }
    }
    if (reward.contract != null && !(typeof reward.contract === "string" && ADDRESS.test(reward.contract))) {
      throw new BadInput(`${source}: reward.contract must be an address`);
    }
    const previous = reward.previous ?? null;
    if (previous !== null) {
      if (typeof previous !== "object" || !isInt(previous.seq)) throw new BadInput(`${source}: reward.previous must be null or an object with seq`);
      amount(source, "reward.previous.cumulative_amount", previous.cumulative_amount);
      proofList(source, "reward.previous.proof", previous.proof);
    }
  }
  return data;
}

/** Validate an anchorlake.deployment/1 file the user chose; returns {chainId, BatchAnchor, RewardDistributor}. */
export function parseDeployment(input, source = "deployments file") {
  const data = typeof input === "string" ? parseJson(input, source) : input;
  if (data === null || typeof data !== "object" || Array.isArray(data)) throw new BadInput(`${source}: not a JSON object`);
  if (data.format !== DEPLOYMENT_FORMAT) {
    throw new BadInput(`${source}: format: expected ${DEPLOYMENT_FORMAT}, got ${JSON.stringify(data.format ?? null)}`);
  }
  if (!isInt(data.chain_id) || data.chain_id <= 0) throw new BadInput(`${source}: chain_id must be a positive integer`);
  const out = { chainId: data.chain_id };
  for (const name of ["BatchAnchor", "RewardDistributor", "RewardToken"]) {
    if (data[name] == null) continue;
    if (typeof data[name] !== "string" || !ADDRESS.test(data[name])) throw new BadInput(`${source}: ${name} must be an address`);
    out[name] = data[name].toLowerCase();
  }
  if (!out.BatchAnchor) throw new BadInput(`${source}: BatchAnchor is missing`);
  return out;
}

/** scheme://host:port of an RPC URL: never its path, query or credentials (they often carry API keys). */
export function rpcOrigin(url) {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return "the RPC URL";
  }
}

/**
 * How to give what is missing, in the words of the page (typed fields, a deployments file it loads)
 * or of the node CLI (flags): `nothing` when no trust anchor was given, `chain` appended when an RPC
 * lacks its dataset name or BatchAnchor, `distributor` when the reward cannot be checked.
 */
export const PAGE_WORDS = {
  nothing: "give the chain RPC URL, the dataset name and the BatchAnchor you trust (or load your deployments file), " +
           "or offline a root and tree size you trust",
  chain: " (type them, or load your deployments file)",
  distributor: "give the RewardDistributor address you trust (or load your deployments file)",
};
const CLI_HOW = "give --rpc URL with --deployment FILE (or --contract ADDR) and --dataset NAME, or --root HEX --tree-size N";
export const CLI_WORDS = {
  nothing: CLI_HOW,
  chain: `; ${CLI_HOW}`,
  distributor: "give the RewardDistributor you trust: --distributor ADDR, or --deployment FILE naming one",
};

/**
 * What the user trusts, checked and normalised. Every member may be empty:
 *   rpcUrl, dataset, batchAnchor, distributor  — on chain;
 *   chainId, chainIdSource                     — the chain a deployments file is for;
 *   root, treeSize                             — offline.
 * Raises BadInput for a malformed value or an incomplete pair (a root without a tree size, an RPC
 * without a dataset name and a BatchAnchor address).
 */
export function normaliseTrust(trust = {}, words = PAGE_WORDS) {
  const given = (v) => v !== undefined && v !== null && String(v).trim() !== "";
  const out = { rpcUrl: null, dataset: null, batchAnchor: null, distributor: null, chainId: null,
                chainIdSource: trust.chainIdSource || "the deployments file", root: null, treeSize: null };
  if (given(trust.rpcUrl)) {
    let u;
    try { u = new URL(String(trust.rpcUrl).trim()); } catch { throw new BadInput("the RPC URL is not a URL"); }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new BadInput(`the RPC URL must be http:// or https://, not ${u.protocol}`);
    out.rpcUrl = String(trust.rpcUrl).trim();
  }
  if (given(trust.dataset)) out.dataset = String(trust.dataset).trim();
  for (const [key, what] of [["batchAnchor", "BatchAnchor"], ["distributor", "RewardDistributor"]]) {
    if (!given(trust[key])) continue;
    const v = String(trust[key]).trim();
    if (!ADDRESS.test(v)) throw new BadInput(`${what}: ${JSON.stringify(v.slice(0, 60))} is not an address (0x and 40 hex digits)`);
    out[key] = v.toLowerCase();
  }
  if (given(trust.chainId)) {
    const v = Number(String(trust.chainId).trim());
    if (!isInt(v) || v <= 0) throw new BadInput("the expected chain id must be a positive integer");
    out.chainId = v;
  }
  if (given(trust.root)) {
    const v = String(trust.root).trim().replace(/^0x/i, "").toLowerCase();
    if (!HEX64.test(v)) throw new BadInput("the root you give must be 64 hex characters");
    out.root = v;
  }
  if (given(trust.treeSize)) {
    const text = String(trust.treeSize).trim();
    if (!/^[0-9]+$/.test(text) || !isInt(Number(text))) throw new BadInput("the tree size must be an integer >= 0");
    out.treeSize = Number(text);
  }
  if (out.root !== null && out.treeSize === null) {
    throw new BadInput("a root needs its tree size: a path alone does not bind the size of the tree");
  }
  if (out.root === null && out.treeSize !== null) throw new BadInput("a tree size needs the root it belongs to");
  if (out.rpcUrl !== null && (out.dataset === null || out.batchAnchor === null)) {
    throw new BadInput(`the chain needs what you trust on it: the dataset name and the BatchAnchor address${words.chain}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC: the only I/O. Messages name the RPC by scheme://host:port only.

const NETWORK_ERRORS = { ECONNREFUSED: "connection refused", ENOTFOUND: "host not found", ECONNRESET: "connection reset",
                         ETIMEDOUT: "timed out", EHOSTUNREACH: "host unreachable", ENETUNREACH: "network unreachable" };

/** A JSON-RPC client over fetch(); every failure is an RpcFailure whose message hides the URL's secrets. */
export function rpcClient(url, { timeoutMs = 20000 } = {}) {
  const origin = rpcOrigin(url);
  const target = new URL(url), headers = { "Content-Type": "application/json" };
  const credentials = [decodeURIComponent(target.username), decodeURIComponent(target.password)];
  if (target.username || target.password) {
    // fetch() refuses credentials in a URL: they travel as HTTP Basic authentication instead.
    headers.Authorization = "Basic " + btoa(credentials.join(":"));
    target.username = target.password = "";
  }
  const secrets = [url, target.href, target.pathname + target.search, target.search]
    .filter((s) => s.length > 1).concat(credentials.filter((s) => s.length >= 4));
  const hide = (text) => secrets.reduce((t, s) => t.split(s).join("…"), String(text));
  let id = 0;
  return {
    origin,
    async call(method, params) {
      let response;
      try {
        response = await fetch(target.href, { method: "POST", headers,
          body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }), signal: AbortSignal.timeout(timeoutMs) });
      } catch (e) {
        const code = e?.cause?.code;
        const why = e?.name === "TimeoutError" ? `no answer within ${timeoutMs / 1000} s`
          : code ? (NETWORK_ERRORS[code] ?? code)
            : e?.cause?.message ? e.cause.message
              : "refused, unreachable, or it does not allow this page's origin (CORS)";
        throw new RpcFailure(`cannot reach the chain RPC at ${origin}: ${hide(why)}`);
      }
      if (!response.ok) throw new RpcFailure(`the chain RPC at ${origin} answered HTTP ${response.status} ${hide(response.statusText)}`.trim());
      let body;
      try { body = await response.json(); } catch { throw new RpcFailure(`the chain RPC at ${origin} did not answer JSON`); }
      if (body && body.error) {
        throw new RpcFailure(`the chain RPC at ${origin} answered ${method} with error ${body.error.code ?? ""}: ${hide(body.error.message ?? "")}`);
      }
      if (!body || typeof body.result !== "string") throw new RpcFailure(`the chain RPC at ${origin} gave no result for ${method}`);
      return body.result;
    },
  };
}

const selector = (signature) => hex(keccak256(enc.encode(signature)).slice(0, 4));
const SELECTORS = { batch: selector("batch(bytes32,uint64)"), nextSeq: selector("nextSeq(bytes32)"),
                    rootAt: selector("rootAt(bytes32,uint64)") };
const arg = (value) => value.toString(16).padStart(64, "0");

/** eth_call returning the 32-byte words of the answer, or null when nothing answers at `to`. */
async function callWords(rpc, to, data) {
  const out = (await rpc.call("eth_call", [{ to, data: "0x" + data }, "latest"])).replace(/^0x/, "");
  if (out.length === 0) return null;
  return out.match(/.{64}/g) || [];
}

// ---------------------------------------------------------------------------------------------
// Verification

/**
 * One line of a report: which part, what was compared with what, and its status: "pass", "fail",
 * "unchecked" (a part that had to be checked was not: the receipt is not verified), "skipped" (a
 * part no verifier can check from this receipt: the verdict says it was not checked) or "note".
 */
const line = (status, part, text) => ({ status, part, text });

/**
 * The overall verdict of a list of lines (SPEC §13.4). "Verified" only if something was checked and
 * everything passed; it names the skipped parts, and offline it claims neither dataset nor batch.
 */
function verdictOf(receipt, lines, offline = false) {
  const parts = (status) => [...new Set(lines.filter((l) => l.status === status).map((l) => l.part))];
  const failed = parts("fail"), unchecked = parts("unchecked"), skipped = parts("skipped");
  if (failed.length) return { outcome: "failed", verdict: `Not verified: ${failed.join(", ")} failed` };
  if (unchecked.length) return { outcome: "failed", verdict: `Not verified: ${unchecked.join(", ")} not checked` };
  const n = receipt.rows.length, rows = count(n, "row");
  const verdict = offline
    ? `Verified offline: ${rows} of ${receipt.contributor} ${n === 1 ? "folds" : "fold"} to the given root over the given ` +
      "tree size (the dataset and batch the receipt names are not checked offline)"
    : `Verified: ${rows} of ${receipt.contributor} in ${receipt.dataset} batch ${receipt.seq}`;
  return { outcome: "verified", verdict: verdict + (skipped.length ? ` (${skipped.join(", ")} not checked)` : "") };
}

export const NOTHING = "not verified: nothing to check against";

/**
 * Verify a parsed receipt against what the user trusts (see normaliseTrust).
 * Returns {outcome: "verified" | "failed" | "nothing", verdict, against, lines: [{status, part, text}]}:
 * `against` says what the receipt was checked against.
 * `words` (PAGE_WORDS or CLI_WORDS) say how to give a missing trust anchor.
 * Raises BadInput for bad trust input (a deployments file for another chain included) and
 * RpcFailure when the chain cannot be asked.
 */
export async function verifyReceipt(receipt, trustInput = {}, { rpc = null, words = PAGE_WORDS } = {}) {
  const trust = normaliseTrust(trustInput, words);
  if (trust.rpcUrl === null && trust.root === null) {
    return { outcome: "nothing", verdict: NOTHING, against: "nothing", lines: [line("unchecked", "trust", words.nothing)] };
  }
  const lines = [];
  const against = [];
  if (trust.dataset !== null && receipt.dataset !== trust.dataset) {
    // A receipt for another dataset is not checked further: every value would be compared with the wrong batch.
    lines.push(line("fail", "dataset", `the receipt says dataset ${JSON.stringify(receipt.dataset)}, you are verifying ${JSON.stringify(trust.dataset)}`));
    return { ...verdictOf(receipt, lines), against: `dataset ${trust.dataset}`, lines };
  }
  await checkRows(receipt, lines);
  if (trust.root !== null) {
    checkOffline(receipt, trust, lines);
    against.push(`the root and tree size ${trust.treeSize} you gave`);
  }
  if (trust.rpcUrl !== null) {
    const client = rpc ?? rpcClient(trust.rpcUrl);
    const chainId = parseInt(await client.call("eth_chainId", []), 16);
    if (trust.chainId !== null && trust.chainId !== chainId) {
      throw new BadInput(`${trust.chainIdSource} is for chain ${trust.chainId}, the RPC at ${client.origin} serves chain ${chainId}`);
    }
    const id = datasetId(trust.dataset);
    await checkAnchor(receipt, trust, client, chainId, id, lines);
    await checkReward(receipt, trust, client, id, lines, words);
    against.push(`BatchAnchor ${trust.batchAnchor} on chain ${chainId}` +
                 (trust.distributor && receipt.reward ? ` and RewardDistributor ${trust.distributor}` : ""));
  } else if (receipt.reward) {
    lines.push(line("note", "reward", "not checked offline: rewards are checked against a RewardDistributor on chain"));
  }
  return { ...verdictOf(receipt, lines, trust.rpcUrl === null), against: against.join("; "), lines };
}

async function checkRows(receipt, lines) {
  if (receipt.format === RECEIPT_FORMAT) await foldRange(receipt, lines);
  else await foldPaths(receipt, lines);
}

/** Whether a row's record names the receipt's contributor; a fail line for `part` when not. */
function namesContributor(receipt, row, part, lines) {
  if (row.record.contributor === receipt.contributor) return true;
  lines.push(line("fail", part, `the record names contributor ${JSON.stringify(row.record.contributor ?? null)}, the receipt is for ${receipt.contributor}`));
  return false;
}

/** The leaf hash of a row's record, or null after a fail line for `part` when it has no JCS form. */
async function rowLeaf(row, part, lines) {
  try {
    return await leafHash(row.record);
  } catch (e) {
    lines.push(line("fail", part, `the record has no canonical JSON form: ${e.message}`));
    return null;
  }
}

/** receipt/2: the rows are leaves [start, end) in order; with the range proof they fold to the root. */
async function foldRange(receipt, lines) {
  const { root, tree_size: size } = receipt, { start, end } = receipt.range;
  const leafHashes = [];
  for (const [n, row] of receipt.rows.entries()) {
    const part = `row ${n} (leaf ${start + n})`;
    // A row of another contributor fails even where it is in the tree: it is not this contributor's
    // row. It is still folded: whether the rows are in the tree says what was changed.
    namesContributor(receipt, row, part, lines);
    leafHashes.push(await rowLeaf(row, part, lines));
  }
  if (leafHashes.includes(null)) return;
  const part = `rows [${start}, ${end})`;
  const got = await rootFromRange(size, start, end, leafHashes, receipt.proof.map(unhex));
  if (got === null) lines.push(line("fail", part, `the range proof does not fit these leaves of a tree of ${leaves(size)}`));
  else if (hex(got) !== root) {
    lines.push(line("fail", part, `fold to root ${short(hex(got))} over ${leaves(size)}, not to the receipt's root ` +
                                  `${short(root)}: a record, the range, the tree size or the proof was changed`));
  } else lines.push(line("pass", part, `fold to the root ${short(root)} over ${leaves(size)}`));
}

/** receipt/1: each row folds along its own inclusion path; no leaf is shown twice. */
async function foldPaths(receipt, lines) {
  const root = receipt.root;
  // One leaf shown as several rows would count one contributed row several times.
  const seen = new Map();
  for (const row of receipt.rows) seen.set(row.leaf_index, (seen.get(row.leaf_index) ?? 0) + 1);
  const repeated = [...seen].filter(([, n]) => n > 1).map(([index, n]) => `leaf index ${index} (${count(n, "time")})`);
  if (repeated.length) {
    lines.push(line("fail", "rows", `the rows repeat ${repeated.join(", ")}: each row of a receipt must be a different leaf`));
  }
  for (const [n, row] of receipt.rows.entries()) {
    const part = `row ${n} (leaf ${row.leaf_index})`;
    if (!namesContributor(receipt, row, part, lines)) continue;
    const leaf = await rowLeaf(row, part, lines);
    if (leaf === null) continue;
    const got = await rootFromInclusion(row.leaf_index, receipt.tree_size, leaf, row.path.map(unhex));
    if (got === null) lines.push(line("fail", part, `the path does not fit a tree of ${leaves(receipt.tree_size)}`));
    else if (hex(got) !== root) lines.push(line("fail", part, `folds to root ${short(hex(got))}, not the receipt's root ${short(root)}: the record or its path was changed`));
    else lines.push(line("pass", part, `folds to the root ${short(root)} over ${leaves(receipt.tree_size)}`));
  }
}

function checkOffline(receipt, trust, lines) {
  const differ = [];
  if (receipt.root !== trust.root) differ.push(`root ${short(receipt.root)} is not the given root ${short(trust.root)}`);
  if (receipt.tree_size !== trust.treeSize) differ.push(`tree size ${receipt.tree_size} is not the given tree size ${trust.treeSize}`);
  lines.push(differ.length ? line("fail", "root (offline)", differ.join("; "))
    : line("pass", "root (offline)", `root ${short(receipt.root)} and tree size ${receipt.tree_size} equal the root and tree size you gave`));
}

async function checkAnchor(receipt, trust, rpc, chainId, id, lines) {
  const named = receipt.anchor ?? {};
  const mismatches = [];
  if ("chain_id" in named && named.chain_id !== chainId) mismatches.push(`chain ${named.chain_id}, the RPC serves chain ${chainId}`);
  if ("contract" in named && String(named.contract).toLowerCase() !== trust.batchAnchor) {
    mismatches.push(`contract ${named.contract}, you trust BatchAnchor ${trust.batchAnchor}`);
  }
  if ("dataset_id" in named && String(named.dataset_id).toLowerCase() !== id) {
    mismatches.push(`dataset id ${named.dataset_id}, ${trust.dataset} is ${id}`);
  }
  for (const m of mismatches) lines.push(line("fail", "anchor", `the receipt names ${m}`));

  const where = `BatchAnchor ${trust.batchAnchor} on chain ${chainId}`;
  const words = await callWords(rpc, trust.batchAnchor, SELECTORS.batch + arg(id.slice(2)) + arg(BigInt(receipt.seq)));
  if (words === null || words.length < 4) {
    lines.push(line("fail", "batch", `nothing answers batch() at ${where}: no BatchAnchor at that address?`));
    return;
  }
  const [root, treeSizeWord, manifestHash] = words;
  if (/^0+$/.test(manifestHash)) {
    lines.push(line("fail", "batch", `${trust.dataset} batch ${receipt.seq} is not anchored in ${where}`));
    return;
  }
  const treeSize = BigInt("0x" + treeSizeWord);
  const differ = [];
  if (root !== receipt.root) differ.push(`root ${short(receipt.root)} differs from the anchored ${short(root)}`);
  if (treeSize !== BigInt(receipt.tree_size)) differ.push(`tree size ${receipt.tree_size} differs from the anchored ${treeSize}`);
  if (manifestHash !== receipt.manifest_sha256) differ.push(`manifest hash ${short(receipt.manifest_sha256)} differs from the anchored ${short(manifestHash)}`);
  const forDataset = `for dataset ${trust.dataset} (id ${short0x(id)}) batch ${receipt.seq}`;
  lines.push(differ.length ? line("fail", "batch", `${differ.join("; ")} in ${where} ${forDataset}`)
    : line("pass", "batch", `root ${short(root)}, tree size ${treeSize} and manifest hash ${short(manifestHash)} equal ${where} ${forDataset}`));
}

/** The batch amount cannot be checked when a batch after the first shows no earlier cumulative amount. */
export const BATCH_AMOUNT_NOT_CHECKED = "batch amount not checked: the receipt shows no earlier cumulative amount, " +
  "and a rewards tree cannot prove there was none";

async function checkReward(receipt, trust, rpc, id, lines, words = PAGE_WORDS) {
  const reward = receipt.reward ?? null;
  if (reward === null) {
    lines.push(line("note", "reward", "the receipt has no reward part"));
    return;
  }
  if (trust.distributor === null) {
    lines.push(line("unchecked", "reward", `not checked: ${words.distributor}`));
    return;
  }
  const where = `RewardDistributor ${trust.distributor}`;
  if (reward.contract != null && reward.contract.toLowerCase() !== trust.distributor) {
    lines.push(line("fail", "reward", `the receipt names contract ${reward.contract}, you trust ${where}`));
  }
  const next = await callWords(rpc, trust.distributor, SELECTORS.nextSeq + arg(id.slice(2)));
  if (next === null || next.length < 1) {
    lines.push(line("fail", "reward", `nothing answers nextSeq() at ${where}: no RewardDistributor at that address?`));
    return;
  }
  // rootAt of a batch that published nothing (no accepted row, or not yet) is zero.
  const rootAt = async (seq) => (await callWords(rpc, trust.distributor, SELECTORS.rootAt + arg(id.slice(2)) + arg(BigInt(seq))))?.[0];
  const isPublished = (root) => typeof root === "string" && !/^0+$/.test(root);
  const onchain = await rootAt(receipt.seq);
  if (!isPublished(onchain)) {
    lines.push(line("fail", "reward", `rewards of batch ${receipt.seq} are not published in ${where}`));
    return;
  }
  const cumulative = BigInt(reward.cumulative_amount), batchAmount = BigInt(reward.amount);
  const folded = hex(processProof(rewardLeaf(receipt.contributor, cumulative), reward.proof.map(unhex)));
  const at = `rootAt(${trust.dataset}, ${receipt.seq}) = ${short0x(onchain ?? "")} in ${where}`;
  if (folded !== onchain) {
    lines.push(line("fail", "reward", `cumulative amount ${cumulative} with its proof folds to ${short0x(folded)}, not to ${at}`));
  } else {
    // In base units: the receipt's `unit` is its own word, which nothing here checks.
    lines.push(line("pass", "reward", `cumulative ${cumulative} base units folds to ${at}`));
  }
  if (reward.root != null && reward.root.toLowerCase().replace(/^0x/, "") !== onchain) {
    lines.push(line("fail", "reward", `the receipt names rewards root ${short0x(reward.root)}, ${where} holds ${short0x(onchain ?? "")}`));
  }

  const previous = reward.previous ?? null;
  if (receipt.seq === 0) {
    lines.push(previous !== null
      ? line("fail", "batch amount", `batch 0 has no earlier batch, the receipt names a previous reward of batch ${previous.seq}`)
      : batchAmount === cumulative ? line("pass", "batch amount", `batch amount ${batchAmount} = cumulative ${cumulative} (batch 0 has no earlier reward)`)
        : line("fail", "batch amount", `batch amount ${batchAmount} is not the cumulative ${cumulative} of batch 0`));
    return;
  }
  if (previous === null) {
    // A StandardMerkleTree proves what it holds, never what it lacks: "no earlier reward" cannot be checked.
    lines.push(line("skipped", "batch amount", BATCH_AMOUNT_NOT_CHECKED));
    return;
  }
  if (previous.seq < 0 || previous.seq >= receipt.seq) {
    lines.push(line("fail", "batch amount", `the previous reward is of batch ${previous.seq}, not of one before batch ${receipt.seq}`));
    return;
  }
  for (let between = previous.seq + 1; between < receipt.seq; between++) {  // batches that paid nothing
    if (isPublished(await rootAt(between))) {
      lines.push(line("fail", "batch amount", `the previous reward is of batch ${previous.seq}, but batch ${between} published rewards after it`));
      return;
    }
  }
  const before = BigInt(previous.cumulative_amount);
  const earlier = await rootAt(previous.seq);
  const foldedBefore = hex(processProof(rewardLeaf(receipt.contributor, before), previous.proof.map(unhex)));
  const atBefore = `rootAt(${trust.dataset}, ${previous.seq}) = ${short0x(earlier ?? "")}`;
  if (foldedBefore !== earlier) {
    lines.push(line("fail", "batch amount", `the previous cumulative ${before} with its proof folds to ${short0x(foldedBefore)}, not to ${atBefore}`));
  } else if (batchAmount !== cumulative - before) {
    lines.push(line("fail", "batch amount", `batch amount ${batchAmount} is not cumulative ${cumulative} − previous ${before} (previous folds to ${atBefore})`));
  } else {
    lines.push(line("pass", "batch amount", `batch amount ${batchAmount} = cumulative ${cumulative} − previous ${before} (previous folds to ${atBefore})`));
  }
}

// ---------------------------------------------------------------------------------------------
// Claiming (SPEC §13.6): anyone may submit a claim; the tokens always go to the contributor.

const CLAIM_SELECTORS = { claim: selector("claim(bytes32,address,uint256,bytes32[])"),
                          latestRoot: selector("latestRoot(bytes32)"), claimed: selector("claimed(bytes32,address)") };

/** The calldata of RewardDistributor.claim(datasetId, account, cumulativeAmount, proof), as 0x hex. */
export function claimCalldata(id, account, cumulativeAmount, proof) {
  const words = [id.replace(/^0x/, ""), arg(BigInt(account)), arg(BigInt(cumulativeAmount)), arg(4n * 32n),
                 arg(BigInt(proof.length)), ...proof.map((p) => p.replace(/^0x/, "").toLowerCase())];
  return "0x" + CLAIM_SELECTORS.claim + words.join("");
}

/**
 * What the receipt's contributor can claim now, from a receipt that verified with its reward:
 * {ready, note} and, when ready, {to, chainId, data, amount}. Ready only when the receipt's reward root is the dataset's
 * latest published root (claims verify against it) and something is left to pay.
 */
export async function claimPlan(receipt, trustInput, { rpc = null } = {}) {
  const trust = normaliseTrust(trustInput);
  const reward = receipt.reward ?? null;
  if (trust.rpcUrl === null || trust.distributor === null || reward === null) {
    return { ready: false, note: "a claim needs the chain, the RewardDistributor you trust and a receipt with a reward" };
  }
  const client = rpc ?? rpcClient(trust.rpcUrl);
  const chainId = parseInt(await client.call("eth_chainId", []), 16);
  const id = datasetId(trust.dataset);
  const latest = (await callWords(client, trust.distributor, CLAIM_SELECTORS.latestRoot + arg(id.slice(2))))?.[0];
  const root = String(reward.root ?? "").replace(/^0x/, "").toLowerCase();
  if (latest !== root) {
    return { ready: false, note: `this receipt's reward proof is for batch ${receipt.seq}; a later batch has published ` +
      `rewards since, and claims check the latest root: take your receipt of the latest batch, or run ` +
      `anchorlake claim --dataset ${trust.dataset} --contributor ${receipt.contributor}` };
  }
  const paid = BigInt("0x" + ((await callWords(client, trust.distributor, CLAIM_SELECTORS.claimed + arg(id.slice(2)) +
    arg(BigInt(receipt.contributor))))?.[0] ?? "0"));
  const cumulative = BigInt(reward.cumulative_amount);
  if (cumulative <= paid) {
    return { ready: false, note: `nothing to claim: ${receipt.contributor} has been paid its cumulative ${cumulative} base units` };
  }
  return { ready: true, to: trust.distributor, chainId, amount: cumulative - paid,
           data: claimCalldata(id, receipt.contributor, cumulative, reward.proof),
           note: `${receipt.contributor} can claim ${cumulative - paid} base units (cumulative ${cumulative}, paid ${paid})` };
}
