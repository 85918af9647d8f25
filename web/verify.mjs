// anchorlake receipt verifier, independent of the Python code: RFC 8785 (JCS) leaves, RFC 9162
// inclusion proofs, and the anchored root, tree size and manifest hash read from BatchAnchor over
// JSON-RPC. Runs in a browser (verify.html) and in Node 20 (verify-cli.mjs); no dependencies.

const enc = new TextEncoder();

/** RFC 8785: JSON.stringify already gives ECMAScript numbers and JCS string escapes; sort keys by UTF-16. */
export function canonicalize(value) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(canonicalize).join(",") + "]";
  const keys = Object.keys(value).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonicalize(value[k])).join(",") + "}";
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (text) => Uint8Array.from(text.replace(/^0x/, "").match(/../g) || [], (h) => parseInt(h, 16));

async function sha256(...parts) {
  const size = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(size);
  let at = 0;
  for (const p of parts) { buf.set(p, at); at += p.length; }
  return new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", buf));
}

export async function leafHash(record) {
  return sha256(Uint8Array.of(0), enc.encode(canonicalize(record)));
}

/** RFC 9162 §2.1.3.2: the root a leaf and its path imply, or null if the path is malformed. */
export async function rootFromInclusion(index, size, leaf, path) {
  if (!(index >= 0 && index < size)) return null;
  let fn = BigInt(index), sn = BigInt(size - 1), r = leaf;
  for (const p of path) {
    if (sn === 0n) return null;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      if ((fn & 1n) === 0n) while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n ? r : null;
}

const BATCH_SELECTOR = "fc5e8fba"; // batch(bytes32,uint64)

async function rpc(url, method, params) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }) });
  const body = await response.json();
  if (body.error) throw new Error(`${method}: ${body.error.message}`);
  return body.result;
}

/** What BatchAnchor holds for (datasetId, seq): {root, treeSize, manifestHash} as hex / number. */
export async function anchoredBatch(rpcUrl, contract, datasetId, seq) {
  const data = "0x" + BATCH_SELECTOR + datasetId.replace(/^0x/, "").padStart(64, "0") + seq.toString(16).padStart(64, "0");
  const out = (await rpc(rpcUrl, "eth_call", [{ to: contract, data }, "latest"])).replace(/^0x/, "");
  return { root: out.slice(0, 64), treeSize: parseInt(out.slice(64, 128), 16), manifestHash: out.slice(128, 192),
           chainId: parseInt(await rpc(rpcUrl, "eth_chainId", []), 16) };
}

/** Verify a receipt object; returns a list of failure lines (empty when it verifies). */
export async function verifyReceipt(receipt, { rpcUrl = null, root = null } = {}) {
  const failures = [];
  if (receipt.format !== "anchorlake.receipt/1") return [`format: expected anchorlake.receipt/1`];
  const expected = unhex(receipt.root);
  for (const [n, row] of receipt.rows.entries()) {
    const where = `row ${n} (leaf ${row.leaf_index})`;
    if (row.record.contributor !== receipt.contributor) {
      failures.push(`${where}: record names contributor ${row.record.contributor}, the receipt is for ${receipt.contributor}`);
      continue;
    }
    const got = await rootFromInclusion(row.leaf_index, receipt.tree_size, await leafHash(row.record), row.path.map(unhex));
    if (got === null) failures.push(`${where}: the path does not fit a tree of ${receipt.tree_size} leaves`);
    else if (hex(got) !== hex(expected)) failures.push(`${where}: folds to root ${hex(got)}, expected ${receipt.root}`);
  }
  if (root !== null && root.replace(/^0x/, "") !== receipt.root) failures.push(`root ${receipt.root} is not the given root ${root}`);
  if (rpcUrl !== null) {
    if (!receipt.anchor) return failures.concat(["the receipt has no anchor to check on chain"]);
    const onchain = await anchoredBatch(rpcUrl, receipt.anchor.contract, receipt.anchor.dataset_id, receipt.seq);
    if (onchain.chainId !== receipt.anchor.chain_id) failures.push(`the RPC serves chain ${onchain.chainId}, the receipt names ${receipt.anchor.chain_id}`);
    if (onchain.root !== receipt.root) failures.push(`root ${receipt.root} differs from the anchored ${onchain.root}`);
    if (onchain.treeSize !== receipt.tree_size) failures.push(`tree size ${receipt.tree_size} differs from the anchored ${onchain.treeSize}`);
    if (onchain.manifestHash !== receipt.manifest_sha256) failures.push(`manifest ${receipt.manifest_sha256} differs from the anchored ${onchain.manifestHash}`);
  }
  return failures;
}
