import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { BUNDLE_SCHEMA, type Manifest, manifestSchema } from "../bundle/manifest.js";
import { MODEL_PACK_DIR, type ModelPack, modelPackSchema, packMismatches } from "../bundle/model-pack.js";
import { IteraError } from "../errors.js";
import { VERSION } from "../version.js";
import { bundleIndexSha256, inBundle, parseJsonWith } from "./embedded.js";
import { writableRoot } from "./extract.js";
import { sha256, tempPathFor } from "../util/fs.js";

/**
 * How the agent inside a bundle finds its model (issue #18): the release folder the executable runs
 * from holds `manifest.json` (the bundle's signed manifest), `model-pack.json` and `model/`. They were
 * checked against the signed manifest when installed (itera flash, install.sh, fleet update); at
 * start they are checked cheaply, as the native extraction is (src/agent-host/extract.ts):
 *
 * - manifest.json must be an itera.bundle/v2 manifest naming this runtime (`parts.runtime.index_sha256`
 *   = the sha256 of the embedded bundle.json), so a model pack cannot be run by another runtime build;
 * - model-pack.json must have the sha256 the manifest gives it and list exactly the manifest's model
 *   files; every model file must have its size;
 * - the first start of a model pack hashes every model file against model-pack.json and leaves a
 *   stamp in the agent's cache (size, mtime and inode of each file); later starts compare the stamp
 *   with the files' stat and hash nothing.
 *
 * Any mismatch stops the agent with exit code 3. There is no fallback: no model pack, no model.
 */
export interface InstalledRelease {
  manifest: Manifest;
  pack: ModelPack;
  modelDir: string;
  /** True when this start hashed the model files (a first start of this pack here). */
  hashed: boolean;
}

let release: InstalledRelease | undefined;

/**
 * The version of the release this agent runs: in a bundle its manifest's `version` (the model card's
 * unless `itera build --version` said otherwise), which fleet updates install and health-check by;
 * outside a bundle (development) the software's own version.
 */
export function runningRelease(): string {
  return inBundle() ? installedRelease().manifest.version : VERSION;
}

export function installedRelease(): InstalledRelease {
  if (release) return release;
  const dir = dirname(process.execPath);
  const manifestRaw = readRequired(join(dir, "manifest.json"));
  const manifest = parseJsonWith(manifestSchema, manifestRaw, (d) => refused(join(dir, "manifest.json"), d));
  if (manifest.schema !== BUNDLE_SCHEMA || !manifest.parts) {
    throw refused(join(dir, "manifest.json"), `it is a ${manifest.schema} manifest, not ${BUNDLE_SCHEMA}`);
  }
  if (manifest.parts.runtime.index_sha256 !== bundleIndexSha256()) {
    throw refused(join(dir, "manifest.json"), "it names another runtime than this executable");
  }
  const packPath = join(dir, manifest.parts.model_pack.manifest);
  const packRaw = readRequired(packPath);
  const pack = parseJsonWith(modelPackSchema, packRaw, (d) => refused(packPath, d));
  const problems = packMismatches(manifest, pack, sha256(packRaw));
  if (problems.length > 0) throw refused(packPath, problems[0]!);
  const files = Object.entries(pack.files).map(([name, f]) => ({ name, ...f, path: join(dir, name) }));
  const stats = files.map((f) => {
    const st = statSync(f.path, { throwIfNoEntry: false });
    if (!st?.isFile() || st.size !== f.bytes) {
      throw refused(f.path, st ? `${st.size} bytes, the model pack says ${f.bytes}` : "it is missing");
    }
    return `${f.name} ${st.size} ${st.mtimeMs} ${st.ino}`;
  });
  const stampText = `${manifest.parts.model_pack.sha256}\n${stats.join("\n")}\n`;
  const stamp = stampPath(manifest.parts.model_pack.sha256);
  let hashed = false;
  if (readOptional(stamp) !== stampText) {
    for (const f of files) {
      const got = sha256(readFileSync(f.path));
      if (got !== f.sha256) throw refused(f.path, `sha256 ${got}, the model pack says ${f.sha256}`);
    }
    hashed = true;
    writeStamp(stamp, stampText);
  }
  release = { manifest, pack, modelDir: join(dir, MODEL_PACK_DIR), hashed };
  return release;
}

function stampPath(packSha: string): string | undefined {
  try {
    return join(writableRoot(), `model-${packSha.slice(0, 32)}.checked`);
  } catch {
    return undefined; // no writable cache: hash at every start
  }
}

function readOptional(path: string | undefined): string | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function writeStamp(path: string | undefined, text: string): void {
  if (!path) return;
  const tmp = tempPathFor(path);
  try {
    writeFileSync(tmp, text);
    renameSync(tmp, path);
  } catch {
    rmSync(tmp, { force: true }); // a read-only cache: the next start hashes again
  }
}

function readRequired(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new IteraError(`the release has no ${path.split("/").pop()} beside the executable`, {
      where: path,
      fix: `install the whole signed bundle (itera flash, or install.sh) rather than the executable alone (${(e as NodeJS.ErrnoException).code ?? e})`,
      exitCode: 3,
    });
  }
}

function refused(where: string, detail: string): IteraError {
  return new IteraError(`the installed model pack does not match the release: ${detail}`, {
    where,
    fix: "install the signed bundle again (itera flash, or install.sh; `itera verify` checks it)",
    exitCode: 3,
  });
}
