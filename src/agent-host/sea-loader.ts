import { isAscii } from "node:buffer";
import { getRawAsset } from "node:sea";
import { compileFunction, constants } from "node:vm";
import { AGENT_CODE_CACHE_ASSET, AGENT_SCRIPT_ASSET, AGENT_SCRIPT_PARAMS } from "./agent-script-asset.js";

/**
 * The single executable's main script (src/package/sea.ts makes it so): a few hundred bytes that
 * answer `--version` themselves and otherwise compile and run the agent (src/agent-host/sea-main.ts,
 * bundled by src/package/agent-script.ts), embedded as an asset. Node compiles the whole main script
 * at start; the agent's is 3.5 MB, whose source, parse and code cache cost about 20 MB of RSS
 * (docs/packaging.md, "Memory and start-up"), which `--version` does not need.
 * The agent runs as the main script did: the same `require` (Node's built-in modules only), with
 * `__filename` the executable.
 */
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  // Defined by src/package/sea.ts at build time; printed as commander prints it.
  process.stdout.write(`${process.env.ITERA_VERSION}\n`);
} else {
  // The build writes the script in ASCII (src/package/sea.ts): read as latin1, it is a one-byte
  // string, half the size of the two-byte one UTF-8 decoding makes of it.
  const raw = asset(AGENT_SCRIPT_ASSET);
  const agent = compileFunction(raw.toString(isAscii(raw) ? "latin1" : "utf8"), AGENT_SCRIPT_PARAMS, {
    filename: __filename,
    // Made by the build on this target's CPU; V8 ignores a cache that does not match and compiles.
    ...(process.env.ITERA_AGENT_CODE_CACHE === "1" ? { cachedData: asset(AGENT_CODE_CACHE_ASSET) } : {}),
    // The agent's own dynamic imports (esbuild leaves none but Node's built-ins).
    importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  const mod = { exports: {} };
  agent.call(mod.exports, mod.exports, require, mod, __filename, __dirname);
}

/** An embedded asset as a view of the executable's memory (no copy). */
function asset(key: string): Buffer {
  const data = getRawAsset(key);
  return typeof data === "string" ? Buffer.from(data) : Buffer.from(data);
}
