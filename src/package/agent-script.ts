import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build, type Plugin } from "esbuild";
import { IteraError } from "../errors.js";

/**
 * The agent as one CommonJS file (a Node single executable runs exactly one CommonJS script):
 * esbuild bundles src/agent-host/sea-main.ts (asset check, then src/cli/itera-agent.ts) with every
 * JavaScript dependency. Native add-ons cannot live inside that file:
 * - onnxruntime-node's `./binding` and @serialport/bindings-cpp's `./serialport-bindings` are
 *   replaced by src/agent-host/{onnxruntime,serialport}-binding.ts, which load the target's add-on
 *   extracted from the bundle's assets (src/package/assets.ts embeds them);
 * - better-sqlite3 (compiled for the build host only) becomes an adapter over Node 24's built-in
 *   `node:sqlite` (src/agent-host/better-sqlite3-on-node-sqlite.ts).
 */
/** The itera package folder: the nearest parent with itera's package.json (works from src/, dist/ and bundles of them). */
function findPackageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      if ((JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string }).name === "itera")
        return dir;
    } catch {
      // no package.json here: go up
    }
    const up = dirname(dir);
    if (up === dir) return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
    dir = up;
  }
}

export const packageRoot = findPackageRoot();

/** Source when the repository is there (tests, dev), compiled output otherwise. */
export function sourceFile(rel: string): string {
  const ts = join(packageRoot, "src", `${rel}.ts`);
  if (existsSync(ts)) return ts;
  const js = join(packageRoot, "dist", `${rel}.js`);
  if (existsSync(js)) return js;
  throw new IteraError(`cannot find ${rel} to bundle the agent`, {
    where: packageRoot,
    fix: "run itera from a full checkout or install (src/ or dist/ must be present; run `npm run build`)",
  });
}

/** Modules that load a native add-on, and the stand-in that loads the embedded copy instead. */
const addonLoaders: { file: RegExp; importer: RegExp; shim: string }[] = [
  {
    file: /^\.\/binding(\.js)?$/,
    importer: /onnxruntime-node[\\/]dist[\\/]/,
    shim: "agent-host/onnxruntime-binding",
  },
  {
    file: /^\.\/serialport-bindings(\.js)?$/,
    importer: /@serialport[\\/]bindings-cpp[\\/]dist[\\/]/,
    shim: "agent-host/serialport-binding",
  },
  // better-sqlite3 only has a build for the host; Node 24's built-in SQLite takes its place.
  { file: /^better-sqlite3$/, importer: /./, shim: "agent-host/better-sqlite3-on-node-sqlite" },
];

export const nativeAddons: Plugin = {
  name: "itera-native-addons",
  setup(b) {
    for (const loader of addonLoaders) {
      b.onResolve({ filter: loader.file }, (args) =>
        loader.importer.test(args.importer) ? { path: sourceFile(loader.shim) } : undefined,
      );
    }
  },
};

export interface AgentScript {
  bytes: number;
  warnings: string[];
}

/** Bundle the agent into `outFile` (CommonJS, Node 24). */
export async function bundleAgentScript(outFile: string, version: string): Promise<AgentScript> {
  const result = await build({
    entryPoints: [sourceFile("agent-host/sea-main")],
    outfile: outFile,
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node24",
    minifySyntax: true,
    minifyWhitespace: true,
    legalComments: "none",
    logLevel: "silent",
    plugins: [nativeAddons],
    // version.ts reads package.json next to itself in dev; a bundle has the version built in.
    define: {
      "process.env.ITERA_VERSION": JSON.stringify(version),
      "import.meta.url": "__itera_import_meta_url",
    },
    // A lazy global: most starts never ask for import.meta.url, and computing it costs a URL parse.
    banner: {
      js: 'Object.defineProperty(globalThis, "__itera_import_meta_url", { configurable: true, get: () => require("node:url").pathToFileURL(__filename).href });',
    },
    metafile: true,
    // Written here, not by esbuild's service process: a build interrupted meanwhile (SIGINT) removes
    // its work folder, and a process we do not control must not write into it afterwards.
    write: false,
  });
  const file = result.outputFiles[0];
  if (!file) throw new Error("esbuild produced no output file");
  await writeFile(outFile, file.contents);
  const bytes = Object.values(result.metafile.outputs)[0]?.bytes ?? 0;
  return { bytes, warnings: result.warnings.map((w) => w.text) };
}
