import { existsSync, readFileSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build, type Plugin, transform } from "esbuild";
import { AGENT_ENTRY_PART } from "../agent-host/agent-script-asset.js";
import { IteraError } from "../errors.js";

/**
 * The agent as CommonJS parts (a Node single executable runs CommonJS; src/agent-host/sea-loader.ts
 * loads the parts from its assets): esbuild bundles src/agent-host/sea-main.ts (asset check, then
 * src/cli/itera-agent.ts) with every JavaScript dependency. Native add-ons cannot live inside:
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

/**
 * `await import("pkg")` of a CommonJS package (onnxruntime-node in src/bench/runtime-engine.ts): in
 * one bundle esbuild made its namespace of every property of `module.exports`, as Node does; split
 * into parts, the package's part would export only `default`, and an ES module cannot re-export
 * names it only knows at run time. So the import goes to a part of its own whose default export is
 * the package's namespace, and that part's `module.exports` becomes it (bundleAgentScript).
 */
const PACKAGE_NAMESPACE = "itera-package-namespace";
const dynamicPackageImports: Plugin = {
  name: "itera-dynamic-package-imports",
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) =>
      args.kind === "dynamic-import" && !args.path.startsWith("node:")
        ? { path: args.path, namespace: PACKAGE_NAMESPACE, pluginData: args.resolveDir }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: PACKAGE_NAMESPACE }, (args) => ({
      contents: `import * as namespace from ${JSON.stringify(args.path)}; export default namespace;`,
      resolveDir: args.pluginData as string,
      loader: "js",
    }));
  },
};

/**
 * `import { z } from "zod"` takes zod whole (580 KB, half of it the error messages of 50 languages:
 * `z` is a namespace re-exported by name, which esbuild cannot shake); `import * as z from "zod"`
 * is the same module and API, and keeps only what the agent calls (160 KB in the agent). Every command
 * loads zod, so each start compiles and holds the difference.
 */
const ZOD_NAMED_IMPORT = /^import \{ z \} from "zod";$/m;
const zodNamespaceImports: Plugin = {
  name: "itera-zod-namespace-imports",
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, async (args) => {
      const source = await readFile(args.path, "utf8");
      if (!ZOD_NAMED_IMPORT.test(source)) return undefined;
      return { contents: source.replace(ZOD_NAMED_IMPORT, 'import * as z from "zod";'), loader: "ts" };
    });
  },
};

export interface AgentScript {
  /** Every part: file name in the folder -> bytes. */
  parts: Record<string, number>;
  /** All parts together. */
  bytes: number;
  warnings: string[];
}

/**
 * Bundle the agent into the folder `outDir` as CommonJS parts (Node 24) that each command loads
 * only as far as it needs (docs/packaging.md, "Memory and start-up"): esbuild splits the ES modules
 * at every dynamic import (one part per agent command, src/cli/agent-commands/index.ts) and puts
 * the code two of them share in a part of its own, so nothing is in two parts; each part is then
 * turned into a CommonJS module whose imports of other parts are `require("./<part>")` calls,
 * dynamic ones included, which src/agent-host/sea-loader.ts answers from the executable's assets.
 */
export async function bundleAgentScript(outDir: string, version: string): Promise<AgentScript> {
  const result = await build({
    entryPoints: [sourceFile("agent-host/sea-main")],
    outdir: outDir,
    // Flat: the loader finds each part by its file name (src/agent-host/agent-script-asset.ts).
    entryNames: "[name]",
    chunkNames: "[name]-[hash]",
    bundle: true,
    splitting: true,
    platform: "node",
    format: "esm",
    target: "node24",
    minifySyntax: true,
    minifyWhitespace: true,
    legalComments: "none",
    logLevel: "silent",
    plugins: [nativeAddons, dynamicPackageImports, zodNamespaceImports],
    // version.ts reads package.json next to itself in dev; a bundle has the version built in.
    // import.meta.url is the executable's, a lazy global the loader defines (a URL parse most
    // starts never need).
    define: {
      "process.env.ITERA_VERSION": JSON.stringify(version),
      "import.meta.url": "__itera_import_meta_url",
    },
    absWorkingDir: packageRoot,
    metafile: true,
    // Written here, not by esbuild's service process: a build interrupted meanwhile (SIGINT) removes
    // its work folder, and a process we do not control must not write into it afterwards.
    write: false,
  });
  await mkdir(outDir, { recursive: true });
  const parts: Record<string, number> = {};
  const warnings = result.warnings.map((w) => w.text);
  for (const file of result.outputFiles) {
    const name = relative(outDir, file.path);
    const cjs = await transform(file.text, {
      format: "cjs",
      target: "node24",
      // `import("./part.js")` becomes a require of it in a promise: the loader resolves parts.
      supported: { "dynamic-import": false },
      minifySyntax: true,
      minifyWhitespace: true,
      logLevel: "silent",
    });
    warnings.push(...cjs.warnings.map((w) => `${name}: ${w.text}`));
    const from = result.metafile.outputs[relative(packageRoot, file.path)]?.entryPoint ?? "";
    const code = from.startsWith(`${PACKAGE_NAMESPACE}:`)
      ? `${cjs.code};module.exports=module.exports.default;\n`
      : cjs.code;
    await writeFile(join(outDir, name), code);
    parts[name] = Buffer.byteLength(code);
  }
  if (!(AGENT_ENTRY_PART in parts)) throw new Error(`esbuild produced no ${AGENT_ENTRY_PART}`);
  return { parts, bytes: Object.values(parts).reduce((a, b) => a + b, 0), warnings };
}
