import { chmod, copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { inject } from "postject";
import { IteraError } from "../errors.js";
import { execTracked } from "../util/interrupt.js";
import {
  AGENT_CODE_CACHE_ASSET,
  AGENT_PARTS_ASSET,
  AGENT_SCRIPT_PARAMS,
  type AgentPartIndex,
} from "../agent-host/agent-script-asset.js";
import { VERSION } from "../version.js";
import { sourceFile } from "./agent-script.js";
import { hostNodeBinary, SEA_FUSE } from "./node-binary.js";
import { hostTarget, type Target, targetKey } from "./target.js";

/**
 * A Node single executable application: the preparation blob (main script + assets) is made by the
 * build host's Node 24 (`--experimental-sea-config`; the blob must come from the same Node version
 * as the binary it goes into) and injected into a copy of the target's Node binary with postject
 * (resource NODE_SEA_BLOB, flipping the fuse). The blob's main script is the small loader
 * (src/agent-host/sea-loader.ts); the agent's script is an asset of parts, each compiled only when
 * a command needs it (`--version` needs none), and their code caches another. The V8 code cache is CPU- and flag-specific, so it is
 * only made when the target is the build host.
 */
// Killed on SIGINT/SIGTERM, so the blob is never written after the build's work folder is removed.
const run = execTracked;

export interface SeaInput {
  target: Target;
  /** The folder of the bundled agent's CommonJS parts (src/package/agent-script.ts). */
  script: string;
  /** SEA asset key -> file holding the stored bytes. */
  assets: Record<string, string>;
  /** The Node binary of the target (copied, never modified). */
  nodeBinary: string;
  out: string;
  workDir: string;
  /** Node/V8 options the executable always starts with (sea-config `execArgv`, Node >= 24). */
  execArgv?: string[];
}

/**
 * V8 options for a device with this much memory (docs/packaging.md, "Memory and start-up"). Every
 * bundle caps the young generation's semi-spaces at 1 MB (V8's default grows them to 16 MB, and the
 * agent's JavaScript allocates little: `run` 126 -> 116 MB peak on the desktop bundle, with the
 * short-run step decoding). A device with at most 2 GB also gets an old space of a quarter of its
 * memory (on a 512 MB Pi Zero 2 W an old space sized for V8's build, not the board, is what made
 * `bench` grow) and `--lite-mode` (no optimizing compilers: 4-5 MB less, the agent's time is spent in
 * ONNX Runtime; desktops keep the JIT for JavaScript-heavy sampling of large vocabularies).
 */
export function v8HeapFlags(memoryMb: number): string[] {
  if (memoryMb > 2048) return ["--max-semi-space-size=1"];
  return [
    `--max-old-space-size=${Math.max(64, Math.floor(memoryMb / 4))}`,
    "--max-semi-space-size=1",
    "--lite-mode",
  ];
}

/**
 * The script with every non-ASCII character written as a \u escape, so that the loader can read it
 * as a one-byte string. esbuild escapes them in strings and templates but not in regular expression
 * literals (systeminformation's `/[^°]/`), where `\u00b0` means the same.
 */
export function asciiScript(source: string): string {
  return source.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

export async function makeSeaExecutable(input: SeaInput): Promise<{ blobBytes: number }> {
  const blob = join(input.workDir, "sea-prep.blob");
  const config = join(input.workDir, "sea-config.json");
  const sameAsHost = targetKey(input.target) === hostTarget().key;
  const agent = await agentAssets(input, sameAsHost);
  const loader = join(input.workDir, "sea-loader.cjs");
  await build({
    entryPoints: [sourceFile("agent-host/sea-loader")],
    outfile: loader,
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node24",
    minify: true,
    legalComments: "none",
    logLevel: "silent",
    define: {
      "process.env.ITERA_VERSION": JSON.stringify(VERSION),
      "process.env.ITERA_AGENT_PARTS": JSON.stringify(JSON.stringify(agent.index)),
    },
  });
  await writeFile(
    config,
    JSON.stringify({
      main: loader,
      output: blob,
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      useCodeCache: sameAsHost,
      assets: {
        ...input.assets,
        ...agent.assets,
      },
      ...(input.execArgv?.length ? { execArgv: input.execArgv } : {}),
    }),
  );
  try {
    await run(await hostNodeBinary(), ["--experimental-sea-config", config], {
      cwd: input.workDir,
      maxBuffer: 16 << 20,
    });
  } catch (e) {
    throw new IteraError("Node could not make the single-executable blob", {
      where: config,
      fix: `see the output: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`,
    });
  }
  await copyFile(input.nodeBinary, input.out);
  await chmod(input.out, 0o755);
  const data = await readFile(blob);
  // postject's LIEF prints harmless notes about ELF .note sections through console.warn; keep the rest.
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (!/Can't find string offset for section name/.test(String(args[0]))) warn(...args);
  };
  try {
    await inject(input.out, "NODE_SEA_BLOB", data, { sentinelFuse: SEA_FUSE });
  } finally {
    console.warn = warn;
  }
  return { blobBytes: data.length };
}

/**
 * The agent's parts (ASCII, for the loader's one-byte strings) one after another in one asset, their
 * index for the loader and, when the target is the build host, each part's V8 code cache likewise in
 * another: made by the target's Node (the build host's) with the executable's V8 flags, each part
 * compiled as the loader compiles it. Without it every start compiles its parts again
 * (docs/packaging.md, "Memory and start-up": more time and more memory).
 */
async function agentAssets(
  input: SeaInput,
  withCodeCache: boolean,
): Promise<{ assets: Record<string, string>; index: AgentPartIndex }> {
  const dir = join(input.workDir, "agent-parts");
  await mkdir(dir, { recursive: true });
  const names = (await readdir(input.script)).sort();
  const files = names.map((name) => join(dir, name));
  for (const [i, name] of names.entries())
    await writeFile(files[i]!, asciiScript(await readFile(join(input.script, name), "utf8")));
  const caches = files.map((file) => `${file}.v8cache`);
  if (withCodeCache) {
    const make = `const fs = require("node:fs");
for (const [script, out] of JSON.parse(process.argv[1])) {
  const f = require("node:vm").compileFunction(fs.readFileSync(script, "latin1"), ${JSON.stringify(AGENT_SCRIPT_PARAMS)}, { produceCachedData: true });
  if (!f.cachedData) throw new Error("V8 made no code cache of " + script);
  fs.writeFileSync(out, f.cachedData);
}`;
    const jobs = JSON.stringify(files.map((file, i) => [file, caches[i]]));
    try {
      await run(await hostNodeBinary(), [...(input.execArgv ?? []), "-e", make, jobs]);
    } catch (e) {
      throw new IteraError("Node could not make the agent script's code cache", {
        where: input.script,
        fix: `see the output: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`,
      });
    }
  }
  const index: AgentPartIndex = {};
  const scripts: Buffer[] = [];
  const cached: Buffer[] = [];
  let at = 0;
  let cacheAt = 0;
  for (const [i, name] of names.entries()) {
    const script = await readFile(files[i]!);
    index[name] = [at, script.length];
    scripts.push(script);
    at += script.length;
    if (!withCodeCache) continue;
    const cache = await readFile(caches[i]!);
    index[name].push(cacheAt, cache.length);
    cached.push(cache);
    cacheAt += cache.length;
  }
  const assets: Record<string, string> = { [AGENT_PARTS_ASSET]: join(input.workDir, AGENT_PARTS_ASSET) };
  await writeFile(assets[AGENT_PARTS_ASSET]!, Buffer.concat(scripts));
  if (withCodeCache) {
    assets[AGENT_CODE_CACHE_ASSET] = join(input.workDir, AGENT_CODE_CACHE_ASSET);
    await writeFile(assets[AGENT_CODE_CACHE_ASSET], Buffer.concat(cached));
  }
  return { assets, index };
}
