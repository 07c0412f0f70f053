import { chmod, copyFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { inject } from "postject";
import { IteraError } from "../errors.js";
import { execTracked } from "../util/interrupt.js";
import {
  AGENT_CODE_CACHE_ASSET,
  AGENT_SCRIPT_ASSET,
  AGENT_SCRIPT_PARAMS,
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
 * (src/agent-host/sea-loader.ts); the agent's script is an asset, compiled only when a command needs
 * it (`--version` does not). The V8 code cache is CPU- and flag-specific, so it is only made when the
 * target is the build host.
 */
// Killed on SIGINT/SIGTERM, so the blob is never written after the build's work folder is removed.
const run = execTracked;

export interface SeaInput {
  target: Target;
  /** The bundled CommonJS agent (embedded as the asset AGENT_SCRIPT_ASSET). */
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
  const script = join(input.workDir, AGENT_SCRIPT_ASSET);
  await writeFile(script, asciiScript(await readFile(input.script, "utf8")));
  const config = join(input.workDir, "sea-config.json");
  const sameAsHost = targetKey(input.target) === hostTarget().key;
  const cache = sameAsHost ? await agentCodeCache(script, input) : undefined;
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
      "process.env.ITERA_AGENT_CODE_CACHE": JSON.stringify(cache ? "1" : ""),
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
        [AGENT_SCRIPT_ASSET]: script,
        ...(cache ? { [AGENT_CODE_CACHE_ASSET]: cache } : {}),
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
 * V8's code cache of the agent's script, made by the target's Node (the build host's) with the
 * executable's V8 flags, compiled as the loader compiles it: without it every start compiles the
 * 3.5 MB script again (docs/packaging.md, "Memory and start-up": more time and more memory).
 */
async function agentCodeCache(script: string, input: SeaInput): Promise<string> {
  const out = join(input.workDir, AGENT_CODE_CACHE_ASSET);
  const make = `const fs = require("node:fs");
const f = require("node:vm").compileFunction(fs.readFileSync(process.argv[1], "latin1"), ${JSON.stringify(AGENT_SCRIPT_PARAMS)}, { produceCachedData: true });
if (!f.cachedData) throw new Error("V8 made no code cache");
fs.writeFileSync(process.argv[2], f.cachedData);`;
  try {
    await run(await hostNodeBinary(), [...(input.execArgv ?? []), "-e", make, script, out]);
  } catch (e) {
    throw new IteraError("Node could not make the agent script's code cache", {
      where: script,
      fix: `see the output: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`,
    });
  }
  return out;
}
