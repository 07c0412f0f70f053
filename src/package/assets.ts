import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { basename, dirname, join, relative, sep } from "node:path";
import { brotliCompress, constants as zc } from "node:zlib";
import { promisify } from "node:util";
import {
  BUNDLE_INDEX_ASSET,
  NATIVE_PREFIX,
  PROFILE_ASSET,
  type StoredAsset,
} from "../agent-host/bundle-index.js";
import { MODEL_PACK_DIR } from "../bundle/model-pack.js";
import { IteraError } from "../errors.js";
import { sha256 } from "../util/fs.js";
import type { Target } from "./target.js";

/**
 * The files a bundle's runtime embeds as SEA assets, each stored compressed when that pays: the
 * device profile and the target's onnxruntime binding + shared library (the model is not embedded:
 * it travels as the model pack beside the executable, src/package/model-pack.ts). Stored bytes go to
 * files in a work folder (the SEA config points at them) and their hashes to bundle.json.
 */
const brotli = promisify(brotliCompress);

/** Keep a compressed copy only when it saves at least this fraction (fp32 weights barely compress). */
const MIN_SAVING = 0.1;

export interface AssetSource {
  key: string;
  content: Buffer;
}

export interface PreparedAsset extends StoredAsset {
  key: string;
  /** Where the stored bytes are written for the SEA config. */
  file: string;
}

/**
 * The native add-ons a bundle embeds for its target, from the npm packages' own prebuilt binaries:
 * onnxruntime-node's CPU build (the binding and the shared library it links through $ORIGIN), and
 * @serialport/bindings-cpp's prebuild (glibc on Linux) for INA219 meters over a serial port.
 */
export async function nativeAddonFiles(target: Target): Promise<AssetSource[]> {
  const ort = join(packageDir("onnxruntime-node"), "bin", "napi-v6", target.platform, target.arch);
  const serial = join(
    packageDir("@serialport/bindings-cpp"),
    "prebuilds",
    `${target.platform}-${target.arch}`,
  );
  const serialFile =
    target.platform === "win32"
      ? "@serialport+bindings-cpp.node"
      : `@serialport+bindings-cpp${target.arch === "arm64" ? ".armv8" : ""}.glibc.node`;
  const files: [string, string][] = [
    [join(ort, "onnxruntime_binding.node"), "onnxruntime_binding.node"],
    [join(ort, target.platform === "win32" ? "onnxruntime.dll" : "libonnxruntime.so.1"), ""],
    [join(serial, serialFile), "serialport.node"],
  ];
  return Promise.all(
    files.map(async ([path, name]) => {
      const content = await readFile(path).catch(() => {
        throw new IteraError(
          `no ${target.platform}-${target.arch} build of ${basename(path)} in node_modules`,
          {
            where: path,
            fix: "reinstall the dependencies (npm ci): onnxruntime-node and @serialport/bindings-cpp ship prebuilt binaries for linux x64/arm64 and win32 x64",
          },
        );
      });
      return { key: `${NATIVE_PREFIX}${name || basename(path)}`, content };
    }),
  );
}

function packageDir(name: string): string {
  return dirname(createRequire(import.meta.url).resolve(`${name}/package.json`));
}

/** Every file of the model folder (recursively, hidden files skipped), keyed model/<relative path> (its path in the model pack). */
export async function modelFolderFiles(dir: string): Promise<AssetSource[]> {
  const out: AssetSource[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      if (e.name.startsWith(".")) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile())
        out.push({
          key: `${MODEL_PACK_DIR}/${relative(dir, p).split(sep).join("/")}`,
          content: await readFile(p),
        });
    }
  };
  await walk(dir);
  return out;
}

export function profileAsset(profile: unknown): AssetSource {
  return { key: PROFILE_ASSET, content: Buffer.from(`${JSON.stringify(profile, null, 2)}\n`) };
}

/** Compress (where it pays), hash and write one asset's stored bytes under workDir. */
export async function prepareAsset(src: AssetSource, workDir: string, index: number): Promise<PreparedAsset> {
  let stored = src.content;
  let encoding: StoredAsset["encoding"] = "identity";
  // bundle.json is read before anything else and describes the encodings: it is never compressed.
  if (src.content.length >= 4096 && src.key !== BUNDLE_INDEX_ASSET) {
    // Quality 5 with a 16 MB window: within a few % of quality 9 on libonnxruntime at ~20x the speed.
    const br = await brotli(src.content, {
      params: {
        [zc.BROTLI_PARAM_QUALITY]: 5,
        [zc.BROTLI_PARAM_LGWIN]: 24,
        [zc.BROTLI_PARAM_SIZE_HINT]: src.content.length,
      },
    });
    if (br.length <= src.content.length * (1 - MIN_SAVING)) {
      stored = br;
      encoding = "br";
    }
  }
  const file = join(workDir, `asset-${index}.bin`);
  await writeFile(file, stored);
  return {
    key: src.key,
    file,
    sha256: sha256(src.content),
    bytes: src.content.length,
    encoding,
    stored_sha256: sha256(stored),
    stored_bytes: stored.length,
  };
}

export async function fileBytes(path: string): Promise<number> {
  return (await stat(path)).size;
}
