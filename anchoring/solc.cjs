// Compile Solidity standard JSON with the solc npm package (solcjs), resolving imports from
// node_modules. Reads the input JSON on stdin, writes the output JSON on stdout.
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
function findImports(importPath) {
  const candidates = [path.join(root, "node_modules", importPath), path.join(__dirname, "contracts", importPath)];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

const input = fs.readFileSync(0, "utf8");
process.stdout.write(solc.compile(input, { import: findImports }));
