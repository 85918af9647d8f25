// node web/verify-cli.mjs RECEIPT.json [--rpc URL] [--root HEX]: exit 0 verified, 1 failed, 2 bad input.
import { readFileSync } from "node:fs";
import { verifyReceipt } from "./verify.mjs";

const args = process.argv.slice(2);
const option = (name) => { const i = args.indexOf(name); return i >= 0 ? args.splice(i, 2)[1] : null; };
const rpcUrl = option("--rpc"), root = option("--root");
if (args.length !== 1) { console.error("usage: node web/verify-cli.mjs RECEIPT.json [--rpc URL] [--root HEX]"); process.exit(2); }
let receipt;
try { receipt = JSON.parse(readFileSync(args[0], "utf8")); } catch (e) { console.error(`${args[0]}: ${e.message}`); process.exit(2); }
const failures = await verifyReceipt(receipt, { rpcUrl, root });
for (const line of failures) console.error(`FAIL ${args[0]}: ${line}`);
if (!failures.length) console.log(`OK ${args[0]}: ${receipt.rows.length} rows of ${receipt.contributor} verified`);
process.exit(failures.length ? 1 : 0);
