import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { canonicalJson } from "../bundle/manifest.js";
import { IteraError } from "../errors.js";
import { sha256, tempPathFor } from "../util/fs.js";
import { NATIVE_PREFIX } from "./bundle-index.js";
import { assetContent, bundleIndex } from "./embedded.js";

/**
 * First-run extraction of the files that must exist on disk: the onnxruntime binding and shared
 * library (the OS loader only opens files). The model is not embedded: it is the release's model
 * pack beside the executable (src/agent-host/release.ts).
 *
 * They go to <cache>/<key>/ where key is the sha256 of their entries in bundle.json, so two bundles
 * never share a folder and a rebuilt bundle gets a fresh one. <cache> is $ITERA_AGENT_CACHE, else
 * $XDG_CACHE_HOME/itera-agent (~/.cache/itera-agent; %LOCALAPPDATA%\itera-agent on Windows), else `.itera-agent-cache` next to the
 * executable, else the system temp folder: the first one that is writable.
 *
 * Every file is checked against its sha256 as it is decoded; the folder is written under a temp
 * name and renamed into place, so two first runs racing each other both end with one complete
 * folder (the loser of the rename removes its copy and uses the winner's). The `.complete` marker
 * holds the key, i.e. the hashes the files were checked against: later runs check that marker and
 * each file's size, and hash nothing (the files were checked when written, into a cache root the
 * agent creates mode 700). Hashing them at every start cost time and, for the embedded copies, their
 * pages in memory; the executable itself is checked whole by `itera verify`, install.sh and flash.
 */
export interface ExtractedBundle {
  dir: string;
  nativeDir: string;
  /** True when this process wrote the folder (a cold start). */
  extracted: boolean;
}

const COMPLETE = ".complete";

let extracted: ExtractedBundle | undefined;

export function cacheRoots(): string[] {
  const roots: string[] = [];
  if (process.env.ITERA_AGENT_CACHE) roots.push(process.env.ITERA_AGENT_CACHE);
  const xdg = process.env.XDG_CACHE_HOME;
  if (process.platform === "win32" && process.env.LOCALAPPDATA) {
    roots.push(join(process.env.LOCALAPPDATA, "itera-agent"));
  } else {
    roots.push(join(xdg && xdg !== "" ? xdg : join(homedir(), ".cache"), "itera-agent"));
  }
  roots.push(join(dirname(process.execPath), ".itera-agent-cache"));
  roots.push(join(tmpdir(), `itera-agent-${process.getuid?.() ?? "user"}`));
  return roots;
}

export function writableRoot(): string {
  for (const root of cacheRoots()) {
    try {
      mkdirSync(root, { recursive: true, mode: 0o700 });
      accessSync(root, constants.W_OK);
      return root;
    } catch {
      // not writable here: try the next place
    }
  }
  throw new IteraError("no writable folder to extract the native libraries and model to", {
    where: cacheRoots().join(", "),
    fix: "set ITERA_AGENT_CACHE to a writable folder",
  });
}

/** Extract (once) and return where the model and native files are. Synchronous: the onnxruntime shim needs it at require time. */
export function extractBundle(): ExtractedBundle {
  if (extracted) return extracted;
  const idx = bundleIndex();
  const entries = Object.entries(idx.assets).filter(([k]) => k.startsWith(NATIVE_PREFIX));
  const key = sha256(canonicalJson(Object.fromEntries(entries))).slice(0, 32);
  const root = writableRoot();
  const dir = join(root, key);
  pruneCache(root, key);
  const result = (fresh: boolean): ExtractedBundle => ({
    dir,
    nativeDir: join(dir, "native"),
    extracted: fresh,
  });
  if (isComplete(dir, key, entries)) {
    extracted = result(false);
    return extracted;
  }
  const tmp = tempPathFor(dir);
  try {
    for (const [assetKey] of entries) {
      const path = join(tmp, assetKey);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, assetContent(assetKey), {
        mode: assetKey.startsWith(NATIVE_PREFIX) ? 0o755 : 0o644,
      });
    }
    writeFileSync(join(tmp, COMPLETE), key);
    if (existsSync(dir)) {
      if (isComplete(dir, key, entries)) {
        // Another first run finished while this one was writing: never pull a folder from under it.
        rmSync(tmp, { recursive: true, force: true });
        extracted = result(false);
        return extracted;
      }
      rmSync(dir, { recursive: true, force: true }); // an incomplete leftover of a crashed run
    }
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    const code = (e as NodeJS.ErrnoException).code;
    // Another first run renamed its complete copy into place first: use that one.
    if ((code === "ENOTEMPTY" || code === "EEXIST") && isComplete(dir, key, entries)) {
      extracted = result(false);
      return extracted;
    }
    throw e;
  }
  extracted = result(true);
  return extracted;
}

function isComplete(dir: string, key: string, entries: [string, { bytes: number }][]): boolean {
  try {
    if (readFileSync(join(dir, COMPLETE), "utf8") !== key) return false;
    return entries.every(([k, a]) => statSync(join(dir, k)).size === a.bytes);
  } catch {
    return false;
  }
}

/** Which extraction folders the agents using this cache ran last: the newest two are kept. */
const USAGE = ".itera-agent-cache.json";
const KEY_NAME = /^[0-9a-f]{32}$/;

/**
 * Old extraction folders are removed when a runtime with another key starts here: the folders of
 * the current and the previous runtime are kept (a rollback, or an older release still running,
 * uses the previous one). Only folders the agent made are touched: a 32-hex name whose `.complete`
 * stamp holds that same name; anything else in the cache folder is left as it is. Best effort: a
 * folder that cannot be removed now is tried again at the next change.
 */
export function pruneCache(root: string, key: string): string[] {
  const usagePath = join(root, USAGE);
  let usage: { current?: unknown; previous?: unknown } = {};
  try {
    usage = JSON.parse(readFileSync(usagePath, "utf8")) as typeof usage;
  } catch {
    // first start here, or an unreadable record: start a new one
  }
  if (usage.current === key) return []; // the usual start: nothing changed, no folder is listed
  const previous =
    typeof usage.current === "string" && KEY_NAME.test(usage.current)
      ? usage.current
      : newestOwnFolder(root, key);
  const tmp = join(root, `${USAGE}.${process.pid}.tmp`);
  try {
    writeFileSync(tmp, `${JSON.stringify({ current: key, previous })}\n`);
    renameSync(tmp, usagePath);
  } catch {
    rmSync(tmp, { force: true });
    return []; // without the record the next start could not tell what to keep: prune nothing
  }
  const pruned: string[] = [];
  for (const name of ownFolders(root)) {
    if (name === key || name === previous) continue;
    try {
      rmSync(join(root, name), { recursive: true, force: true });
      pruned.push(name);
    } catch {
      // already gone, or not removable now: tried again at the next change
    }
  }
  return pruned;
}

/** The extraction folders the agent made here: a 32-hex name whose `.complete` stamp holds that name. */
function ownFolders(root: string): string[] {
  return readdirSync(root).filter((name) => {
    try {
      return KEY_NAME.test(name) && readFileSync(join(root, name, COMPLETE), "utf8") === name;
    } catch {
      return false;
    }
  });
}

/** Without a record (a cache from before pruning): the most recently completed folder counts as the previous one. */
function newestOwnFolder(root: string, key: string): string | null {
  let best: { name: string; at: number } | null = null;
  for (const name of ownFolders(root)) {
    if (name === key) continue;
    const at = statSync(join(root, name, COMPLETE)).mtimeMs;
    if (!best || at > best.at) best = { name, at };
  }
  return best?.name ?? null;
}
