// Drive web/verify.html in a real headless Chromium (Debian's, through playwright-core) the way a
// person would: load the deployments file they trust, type the RPC URL and dataset name, paste the
// receipt, press Verify, read the verdict. tests/test_page.py runs it.
//
//   node tests/page/drive.mjs CASES.json   prints {"name": {verdict, against, summary, outcome, checks, fields,
//                                                        claim, errors}, ...}
//
// CASES.json: {"url": "http://127.0.0.1:PORT/verify.html", "chromium": "/usr/bin/chromium",
//              "shots": "DIR", "cases": [{"name", "deployment": PATH|null, "fields": {id: value},
//                                         "receipt": TEXT to paste, or "receiptFile": PATH to choose,
//                                         "wallet": {"rpc", "account"} to inject an EIP-1193 wallet that
//                                         forwards to that node, then press "Claim with your wallet"}]}
// Each case leaves DIR/<name>.png, a screenshot of the whole page after the verdict (and the claim).
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
mkdirSync(spec.shots, { recursive: true });
const browser = await chromium.launch({ executablePath: spec.chromium, args: ["--no-sandbox"], headless: true });
const results = {};
try {
  let errors = [];
  const open = async (wallet) => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
    if (wallet) await page.addInitScript(injectWallet, wallet);
    return page;
  };
  const plain = await open(null);
  for (const c of spec.cases) {
    errors = [];
    const page = c.wallet ? await open(c.wallet) : plain;
    await page.goto(spec.url);
    if (c.deployment) {
      await page.setInputFiles("#deployment-file", c.deployment);
      await page.waitForFunction(() => document.getElementById("deployment-status").textContent !== "");
    }
    for (const [id, value] of Object.entries(c.fields ?? {})) await page.fill(`#${id}`, String(value));
    if (c.receiptFile) {
      await page.setInputFiles("#receipt-file", c.receiptFile);
      await page.waitForFunction(() => document.getElementById("receipt").value !== "");
    } else {
      await page.fill("#receipt", c.receipt);
    }
    await page.click("#verify");
    await page.waitForSelector("#result[data-state=done]", { timeout: 30000 });
    const shown = await page.evaluate(() => ({
      verdict: document.getElementById("verdict").textContent,
      against: document.getElementById("against").textContent,
      summary: document.getElementById("receipt-summary").textContent,
      outcome: document.getElementById("result").dataset.outcome,
      deploymentStatus: document.getElementById("deployment-status").textContent,
      checks: [...document.querySelectorAll("#checks li")].map((li) => ({
        status: li.className, part: li.querySelector(".part").textContent, text: li.querySelector(".text").textContent })),
      fields: Object.fromEntries(["rpc", "dataset", "batch-anchor", "distributor", "chain-id", "root", "tree-size"]
        .map((id) => [id, document.getElementById(id).value])),
    }));
    if (c.wallet && await page.isVisible("#claim-wallet")) {
      await page.click("#claim-wallet");
      await page.waitForSelector("#claim-status[data-state=done]", { timeout: 30000 });
    }
    const claim = await page.evaluate(() => ({
      shown: !document.getElementById("claim").hidden, note: document.getElementById("claim-note").textContent,
      wallet: !document.getElementById("claim-wallet").hidden, calldata: document.getElementById("claim-calldata").textContent,
      status: document.getElementById("claim-status").textContent }));
    await page.screenshot({ path: join(spec.shots, `${c.name}.png`), fullPage: true });
    if (page !== plain) await page.close();
    results[c.name] = { ...shown, claim, errors };
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(results));

/** Runs in the page before its scripts: a minimal EIP-1193 wallet holding `account` whose requests
 *  go to the node at `rpc` (anvil signs for its own unlocked accounts). */
function injectWallet({ rpc, account }) {
  window.ethereum = {
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [account];
      const answer = await fetch(rpc, { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params: params ?? [] }) });
      const body = await answer.json();
      if (body.error) throw new Error(body.error.message);
      return body.result;
    },
  };
}
