import { isAscii } from "node:buffer";
import { getRawAsset } from "node:sea";
import { constants, Script } from "node:vm";
import {
  AGENT_CODE_CACHE_ASSET,
  AGENT_CODE_CACHE_OUT_ENV,
  AGENT_ENTRY_PART,
  AGENT_PARTS_ASSET,
  type AgentPartIndex,
} from "./agent-script-asset.js";

/**
 * The single executable's main script (src/package/sea.ts makes it so): a few hundred bytes that
 * answer `--version` themselves and otherwise run the agent (src/agent-host/sea-main.ts), which
 * src/package/agent-script.ts bundles into parts, embedded one after another in one asset
 * (src/agent-host/agent-script-asset.ts). Node compiles the whole main script at start; the agent's
 * is 3.3 MB, and a command needs a part of it: the CLI, zod and the command's own code. So a part is
 * compiled (from its V8 code cache) and run only when the entry part, or a part it runs, requires
 * it (docs/packaging.md, "Memory and start-up"). Each part runs as the main script did: a CommonJS
 * module with `__filename` the executable, whose `require` gives the other parts (`./<part>`) and
 * Node's built-in modules. With ITERA_AGENT_CODE_CACHE_OUT=<folder> (the build's one run) it writes
 * there, at exit, the code cache of each part it compiled: made after the run, it holds the functions
 * V8 compiled lazily on their first call too, which a cache made before running lacks.
 */
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  // Defined by src/package/sea.ts at build time; printed as commander prints it.
  process.stdout.write(`${process.env.ITERA_VERSION}\n`);
} else {
  // import.meta.url in the agent (esbuild maps it here): the executable's, computed on first use.
  Object.defineProperty(globalThis, "__itera_import_meta_url", {
    configurable: true,
    get: () => require("node:url").pathToFileURL(__filename).href,
  });
  // zod compiles a fast path for each object schema it parses with `new Function`, code no cache
  // holds; the agent parses a few documents once each (zod reads globalThis.__zod_globalConfig).
  Object.assign(globalThis, { __zod_globalConfig: { jitless: true } });
  // Where each part lies in the assets, built in by src/package/sea.ts.
  const index = JSON.parse(process.env.ITERA_AGENT_PARTS ?? "{}") as AgentPartIndex;
  const script = asset(AGENT_PARTS_ASSET);
  const cache = index[AGENT_ENTRY_PART]?.length === 4 ? asset(AGENT_CODE_CACHE_ASSET) : undefined;
  const parts = new Map<string, { exports: unknown }>();
  const cacheOut = process.env[AGENT_CODE_CACHE_OUT_ENV];
  const compiled: [string, Script][] = [];
  if (cacheOut) {
    delete process.env[AGENT_CODE_CACHE_OUT_ENV];
    process.on("exit", () => {
      for (const [name, s] of compiled)
        require("node:fs").writeFileSync(`${cacheOut}/${name}`, s.createCachedData());
    });
  }
  const requirePart = (id: string): unknown => {
    if (!id.startsWith("./")) return require(id);
    const name = id.slice(2);
    let mod = parts.get(name);
    if (mod) return mod.exports;
    mod = { exports: {} };
    // Registered before it runs, as Node does, so that a cycle sees the exports made so far.
    parts.set(name, mod);
    const [at = 0, bytes = 0, cacheAt = 0, cacheBytes = 0] = index[name] ?? [];
    // The build writes the parts wrapped and in ASCII (src/package/sea.ts wrapAgentPart): read as
    // latin1, each is a one-byte string, half the size of the two-byte one UTF-8 decoding makes.
    const raw = script.subarray(at, at + bytes);
    const part = new Script(raw.toString(isAscii(raw) ? "latin1" : "utf8"), {
      filename: `${__filename}/${name}`,
      // The wrapper's head is a line of its own: the part's lines keep their numbers.
      lineOffset: -1,
      // Made by the build on this target's CPU; V8 ignores a cache that does not match and compiles.
      ...(cache ? { cachedData: cache.subarray(cacheAt, cacheAt + cacheBytes) } : {}),
      // The agent's own dynamic imports are requires of parts (esbuild leaves only Node's built-ins).
      importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
    });
    if (cacheOut) compiled.push([name, part]);
    part.runInThisContext().call(mod.exports, mod.exports, requirePart, mod, __filename, __dirname);
    return mod.exports;
  };
  requirePart(`./${AGENT_ENTRY_PART}`);
}

/** An embedded asset as a view of the executable's memory (no copy). */
function asset(key: string): Buffer {
  const data = getRawAsset(key);
  return typeof data === "string" ? Buffer.from(data) : Buffer.from(data);
}
