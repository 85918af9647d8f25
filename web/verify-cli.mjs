// node web/verify-cli.mjs RECEIPT.json... [--rpc URL] [--dataset D] [--contract ADDR] [--distributor ADDR]
//                         [--deployment FILE] [--root HEX --tree-size N]
// The same checks as verify.html, from a terminal, of anchorlake.receipt/2 receipts (a leaf range
// and its range proof) and anchorlake.receipt/1 ones (an inclusion path per row). What to check
// against comes from these flags only, never from the receipts. Exit 0 verified, 1 a check failed, 2 bad usage or bad input
// (nothing to check against included), 3 the chain RPC cannot be reached or does not answer.
// Every message is one line (a file name, a JSON error or an RPC's answer may hold newlines).
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { BadInput, CLI_WORDS, NOTHING, VerifyError, parseDeployment, parseReceipt, verifyReceipt } from "./verify.mjs";

const USAGE = "usage: node web/verify-cli.mjs RECEIPT.json... [--rpc URL] [--dataset NAME] [--contract ADDR] " +
              "[--distributor ADDR] [--deployment FILE] [--root HEX --tree-size N]";
const FLAGS = { "--rpc": "rpcUrl", "--dataset": "dataset", "--contract": "batchAnchor", "--distributor": "distributor",
                "--deployment": "deployment", "--root": "root", "--tree-size": "treeSize" };

// A reader that closed the pipe early (`| head`) is not an error of ours.
for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {});
const say = (text) => { try { process.stdout.write(text + "\n"); } catch { /* closed pipe */ } };
const complain = (text) => { try { process.stderr.write(text + "\n"); } catch { /* closed pipe */ } };
/** Whitespace runs (newlines included) as one space: what the CLI prints is one line per message. */
const oneLine = (text) => String(text).replace(/\s+/g, " ").trim();

function parseArgs(argv) {
  const options = {}, receipts = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.startsWith("--") && arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, null];
    if (flag === "-h" || flag === "--help") { say(USAGE); process.exit(0); }
    if (flag in FLAGS) {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new BadInput(`${flag} needs a value; ${USAGE}`);
      options[FLAGS[flag]] = value;
    } else if (flag.startsWith("-") && flag !== "-") {
      throw new BadInput(`unknown option ${flag}; ${USAGE}`);
    } else {
      receipts.push(arg);
    }
  }
  if (receipts.length === 0) throw new BadInput(`give at least one receipt file; ${USAGE}`);
  return { options, receipts };
}

// What a *.gz file may unpack to (a gzip bomb stops there): a batch's receipts files hold at most
// 128 MiB of receipts, or one receipt of up to 256 MiB (`anchorlake verify`'s bound); past that,
// JSON.parse of one line of tiny values could take more memory than a machine has.
const MAX_UNPACKED = 256 * 1024 * 1024;

function read(path) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new BadInput(`${path}: cannot be read (${e.code ?? e.message})`);
  }
  if (!path.endsWith(".gz")) return bytes.toString("utf8");
  let unpacked;
  try { // a batch's receipts files are gzip, a member per receipt (gunzip reads every member)
    unpacked = gunzipSync(bytes, { maxOutputLength: MAX_UNPACKED, info: true });
  } catch (e) {
    if (e.code === "ERR_BUFFER_TOO_LARGE") throw new BadInput(`${path}: unpacks to more than ${MAX_UNPACKED} bytes`);
    throw new BadInput(`${path}: is not gzip (${e.code ?? e.message})`);
  }
  // zlib stops at bytes that do not start a member (zeros, say): anything there is refused, as anchorlake verify does
  if (unpacked.engine.bytesWritten !== bytes.length) throw new BadInput(`${path}: holds bytes after its last gzip member`);
  return unpacked.buffer.toString("utf8");
}

/** Flags win over the deployments file, as in `anchorlake verify`. */
function trustFrom(options) {
  const trust = { ...options };
  delete trust.deployment;
  if (options.deployment) {
    const named = parseDeployment(read(options.deployment), options.deployment);
    trust.chainId = named.chainId;
    trust.chainIdSource = options.deployment;
    trust.batchAnchor ??= named.BatchAnchor;
    trust.distributor ??= named.RewardDistributor;
  }
  return trust;
}

/** [source, receipt] for the receipt in `path`, or for each line of a batch's receipts (`*.jsonl`,
 * `*.jsonl.gz`), each parsed as it is reached (a file of millions of lines is never split at once). */
function* receiptsIn(path) {
  const text = read(path);
  if (!path.replace(/\.gz$/, "").endsWith(".jsonl")) {
    yield [path, parseReceipt(text, path)];
    return;
  }
  let found = false;
  for (let start = 0, n = 1; start < text.length; n++) {
    let end = text.indexOf("\n", start);
    if (end === -1) end = text.length;
    const line = text.slice(start, end);
    start = end + 1;
    if (!line.trim()) continue;
    found = true;
    yield [`${path} line ${n}`, parseReceipt(line, `${path} line ${n}`)];
  }
  if (!found) throw new BadInput(`${path}: holds no receipts`);
}

async function main() {
  const { options, receipts } = parseArgs(process.argv.slice(2));
  const trust = trustFrom(options);
  let exit = 0;
  for (const [path, receipt] of (function* () { for (const path of receipts) yield* receiptsIn(path); })()) {
    const report = await verifyReceipt(receipt, trust, { words: CLI_WORDS });
    if (report.outcome === "nothing") {
      complain(oneLine(`${NOTHING}: ${CLI_WORDS.nothing}`));
      return 2;
    }
    const where = oneLine(path);
    for (const l of report.lines) {
      const text = `${where}: ${oneLine(l.part)}: ${oneLine(l.text)}`;
      if (l.status === "fail" || l.status === "unchecked") complain(`FAIL ${text}`);
      else say(`  ${{ pass: "ok  ", skipped: "?   " }[l.status] ?? "note"} ${text}`);
    }
    if (report.outcome === "verified") say(`OK ${where}: ${oneLine(report.verdict)}, against ${oneLine(report.against)}`);
    else { say(`NOT VERIFIED ${where}: ${oneLine(report.verdict)}`); exit = 1; }
  }
  return exit;
}

let code;
try {
  code = await main();
} catch (e) {
  if (e instanceof VerifyError) {
    complain(`error: ${oneLine(e.message)}`);
    code = e.exitCode;
  } else {
    complain(`error: ${oneLine(e?.message ?? e)}`); // never a stack trace
    code = 2;
  }
}
process.exit(code);
