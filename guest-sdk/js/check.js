// Refuses a module whose `run` export plugin() did not make, before
// componentize-js builds it: such a component builds, and its runs return
// whatever the bare function gives as an empty result.
//
//     node --import escrow-guest/register node_modules/escrow-guest/check.js app.js
//
// The module is imported natively (register.js stands in for escrow's
// imports), so it must not need another component's interfaces to load.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import { PLUGIN } from './escrow.js';

const [file] = process.argv.slice(2);
if (file === undefined) {
  console.error('usage: node --import escrow-guest/register check.js MODULE');
  process.exit(2);
}
let module;
try {
  module = await import(pathToFileURL(resolve(file)).href);
} catch (error) {
  // A syntax error of a dynamic import says no line: node's own check does.
  const checked = error instanceof SyntaxError ? spawnSync(process.execPath, ['--check', file]) : null;
  const where = checked?.status ? `\n${checked.stderr.toString().trimEnd()}` : '';
  console.error(`escrow-guest: cannot load ${file} to check it: ${error.message}${where}`);
  process.exit(1);
}
if (typeof module.run !== 'function' || typeof module.run[PLUGIN] !== 'function') {
  console.error(
    `escrow-guest: ${file} does not export a \`run\` made by plugin(); write \`export const run = plugin(body);\``,
  );
  process.exit(1);
}
