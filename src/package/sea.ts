import { chmod, copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { inject } from "postject";
import { IteraError } from "../errors.js";
import { execTracked } from "../util/interrupt.js";
import {
  AGENT_CODE_CACHE_ASSET,
  AGENT_PART_HEAD,
  AGENT_PART_TAIL,
  AGENT_PARTS_ASSET,
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
 * a command needs it (`--version` needs none), and their code caches another. The V8 code cache is
 * CPU- and flag-specific, so it is only made when the target is the build host; the build then makes
 * the executable again with the caches a run of it made (remakeWithRunCaches).
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

/** The executable as made, and for a host target a way to make it again with caches made by a run. */
export interface SeaExecutable {
  blobBytes: number;
  /**
   * Host targets: make the executable again (a new blob injected into a fresh copy of Node) with the
   * code caches its loader wrote into `dir` after a run (AGENT_CODE_CACHE_OUT_ENV) in place of the
   * build's for the parts that run compiled; the others keep theirs.
   */
  remakeWithRunCaches?: (dir: string) => Promise<{ blobBytes: number }>;
}

export async function makeSeaExecutable(input: SeaInput): Promise<SeaExecutable> {
  const parts = await agentParts(input);
  if (targetKey(input.target) !== hostTarget().key) return { blobBytes: await writeExecutable(input, parts) };
  const built = await codeCachesBeforeRun(parts.files, input.execArgv ?? []);
  return {
    blobBytes: await writeExecutable(input, parts, built),
    remakeWithRunCaches: async (dir) => {
      const fromRun = new Set(await readdir(dir));
      const caches = parts.names.map((name, i) => (fromRun.has(name) ? join(dir, name) : built[i]!));
      return { blobBytes: await writeExecutable(input, parts, caches) };
    },
  };
}

/** The agent's parts as the loader compiles them: names, files (one each) and one asset of all. */
interface AgentParts {
  names: string[];
  files: string[];
  /** Each part's [offset, bytes] in the parts asset. */
  at: number[][];
  asset: string;
}

/**
 * A part as the loader compiles it: in Node's CommonJS wrapper (a vm.Script, whose code cache can be
 * made after it ran; AGENT_PART_HEAD ends its own line, so the part's lines keep their numbers) and
 * in ASCII (for the loader's one-byte strings). A part that starts with a hashbang (a package's
 * command-line entry) keeps it as a comment: only a script's first line may hold one.
 */
export function wrapAgentPart(source: string): string {
  return AGENT_PART_HEAD + asciiScript(source.replace(/^#!/, "//")) + AGENT_PART_TAIL;
}

/** The agent's parts, wrapped (wrapAgentPart), one after another in one asset. */
async function agentParts(input: SeaInput): Promise<AgentParts> {
  const dir = join(input.workDir, "agent-parts");
  await mkdir(dir, { recursive: true });
  const names = (await readdir(input.script)).sort();
  const files = names.map((name) => join(dir, name));
  const scripts: Buffer[] = [];
  const at: number[][] = [];
  let offset = 0;
  for (const [i, name] of names.entries()) {
    const source = await readFile(join(input.script, name), "utf8");
    const script = Buffer.from(wrapAgentPart(source), "latin1");
    await writeFile(files[i]!, script);
    scripts.push(script);
    at.push([offset, script.length]);
    offset += script.length;
  }
  const asset = join(input.workDir, AGENT_PARTS_ASSET);
  await writeFile(asset, Buffer.concat(scripts));
  return { names, files, at, asset };
}

/**
 * Each part's V8 code cache made before anything runs (`<part>.v8cache` beside it), by the target's
 * Node (the build host's) with the executable's V8 flags, each part compiled as the loader compiles
 * it. It holds only what V8 compiles eagerly: the build replaces the caches of the parts a
 * representative run compiles with ones made after that run (remakeWithRunCaches).
 */
export async function codeCachesBeforeRun(files: string[], execArgv: string[]): Promise<string[]> {
  const caches = files.map((file) => `${file}.v8cache`);
  const make = `const fs = require("node:fs");
for (const [script, out] of JSON.parse(process.argv[1])) {
  const source = fs.readFileSync(script, "latin1");
  const data = new (require("node:vm").Script)(source, { lineOffset: -1 }).createCachedData();
  if (!data.length) throw new Error("V8 made no code cache of " + script);
  fs.writeFileSync(out, data);
}`;
  const jobs = JSON.stringify(files.map((file, i) => [file, caches[i]]));
  try {
    await run(await hostNodeBinary(), [...execArgv, "-e", make, jobs]);
  } catch (e) {
    throw new IteraError("Node could not make the agent script's code cache", {
      where: files[0] === undefined ? "(no parts)" : join(files[0], ".."),
      fix: `see the output: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`,
    });
  }
  return caches;
}

/**
 * Make the executable: the loader with the parts' index built in, the parts' code caches (one
 * asset, when given), the blob, and a fresh copy of the target's Node with the blob injected.
 */
async function writeExecutable(input: SeaInput, parts: AgentParts, caches?: string[]): Promise<number> {
  const blob = join(input.workDir, "sea-prep.blob");
  const config = join(input.workDir, "sea-config.json");
  const index: AgentPartIndex = {};
  const assets: Record<string, string> = { ...input.assets, [AGENT_PARTS_ASSET]: parts.asset };
  for (const [i, name] of parts.names.entries()) index[name] = [...parts.at[i]!];
  if (caches) {
    const cached = await Promise.all(caches.map((file) => readFile(file)));
    let at = 0;
    for (const [i, name] of parts.names.entries()) {
      index[name]!.push(at, cached[i]!.length);
      at += cached[i]!.length;
    }
    assets[AGENT_CODE_CACHE_ASSET] = join(input.workDir, AGENT_CODE_CACHE_ASSET);
    await writeFile(assets[AGENT_CODE_CACHE_ASSET], Buffer.concat(cached));
  }
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
      "process.env.ITERA_AGENT_PARTS": JSON.stringify(JSON.stringify(index)),
    },
  });
  await writeFile(
    config,
    JSON.stringify({
      main: loader,
      output: blob,
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      // The loader's own cache, for the same reason as the parts' (made by Node with the blob).
      useCodeCache: caches !== undefined,
      assets,
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
  return data.length;
}
