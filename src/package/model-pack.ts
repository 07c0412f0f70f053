import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Manifest, signManifest, verifyManifestSignature } from "../bundle/manifest.js";
import {
  MODEL_PACK_FILE,
  MODEL_PACK_SCHEMA,
  type ModelPack,
  modelPackSchema,
  packMismatches,
} from "../bundle/model-pack.js";
import { sha256, sha256File } from "../util/fs.js";
import { modelFolderFiles } from "./assets.js";

/**
 * The model pack of a bundle (issue #18; format in src/bundle/model-pack.ts and docs/packaging.md):
 * written by `itera build`, checked by `itera verify` and by anything that installs a pack alone
 * (`checkModelPack`: a model-only fleet update verifies the pack it received with this).
 */
export interface WrittenPack {
  pack: ModelPack;
  /** model-pack.json as written, and its sha256. */
  sha256: string;
  /** The pack's files (model/<path> and model-pack.json) with sha256 and size, for the bundle manifest. */
  files: Manifest["files"];
  /** Bytes of the whole pack: its model files and its manifest. */
  bytes: number;
}

/** Write `model/` (every file of the model folder) and `model-pack.json` (signed when a key is given) into `dir`. */
export async function writeModelPack(
  dir: string,
  modelDir: string,
  model: ModelPack["model"],
  signingKeyPem?: string,
): Promise<WrittenPack> {
  const files: Manifest["files"] = {};
  for (const f of await modelFolderFiles(modelDir)) {
    const dest = join(dir, f.key);
    await mkdir(dirname(dest), { recursive: true });
    await writeFile(dest, f.content);
    files[f.key] = { sha256: sha256(f.content), bytes: f.content.length };
  }
  let pack: ModelPack = modelPackSchema.parse({
    schema: MODEL_PACK_SCHEMA,
    model,
    files,
  });
  if (signingKeyPem) pack = signManifest(pack, signingKeyPem);
  const text = `${JSON.stringify(pack, null, 2)}\n`;
  await writeFile(join(dir, MODEL_PACK_FILE), text);
  const packEntry = { sha256: sha256(text), bytes: Buffer.byteLength(text) };
  const all = { ...files, [MODEL_PACK_FILE]: packEntry };
  return {
    pack,
    sha256: packEntry.sha256,
    files: all,
    bytes: Object.values(all).reduce((n, f) => n + f.bytes, 0),
  };
}

/** What `checkModelPack` found: the pack's signature and files, and whether it belongs to the manifest. */
export interface PackCheck {
  ok: boolean;
  signature: "valid" | "invalid" | "absent" | "untrusted-key";
  problems: string[];
}

/**
 * Check a model pack in a release or bundle folder `dir`: model-pack.json parses, its signature holds
 * (by `trustedKey` when given, else by the key inside it; without a key it must at least be signed by
 * the bundle manifest's signer when `manifest` is given), every model file has its sha256 and size,
 * and, with `manifest`, it is the pack that manifest names (parts.model_pack, the same files).
 */
export async function checkModelPack(
  dir: string,
  manifest?: Manifest,
  trustedKey?: string,
): Promise<PackCheck> {
  const problems: string[] = [];
  const path = join(dir, MODEL_PACK_FILE);
  let raw: Buffer;
  let parsed: unknown;
  try {
    raw = await readFile(path);
    parsed = JSON.parse(raw.toString("utf8"));
  } catch (e) {
    return {
      ok: false,
      signature: "absent",
      problems: [`${MODEL_PACK_FILE} cannot be read: ${(e as Error).message}`],
    };
  }
  const r = modelPackSchema.safeParse(parsed);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    return {
      ok: false,
      signature: "absent",
      problems: [`${MODEL_PACK_FILE}: field '${issue.path.join(".") || "(top)"}': ${issue.message}`],
    };
  }
  const pack = r.data;
  let signature: PackCheck["signature"] = "absent";
  if (pack.signature) {
    signature = verifyManifestSignature(pack) ? "valid" : "invalid";
    if (signature === "valid" && trustedKey !== undefined && !verifyManifestSignature(pack, trustedKey)) {
      signature = "untrusted-key";
    }
    if (
      signature === "valid" &&
      manifest?.signature &&
      pack.signature.public_key !== manifest.signature.public_key
    ) {
      signature = "untrusted-key";
    }
  }
  if (signature === "invalid")
    problems.push(`${MODEL_PACK_FILE}'s signature does not match it (changed after signing)`);
  if (signature === "untrusted-key")
    problems.push(`${MODEL_PACK_FILE} is signed by another key than the bundle`);
  if (signature === "absent" && (trustedKey !== undefined || manifest?.signature)) {
    problems.push(`${MODEL_PACK_FILE} is not signed`);
  }
  for (const [name, want] of Object.entries(pack.files)) {
    const got = await sha256File(join(dir, name)).catch(() => undefined);
    if (got !== want.sha256)
      problems.push(`${name} ${got ? "does not match the model pack's sha256" : "is missing"}`);
  }
  if (manifest) problems.push(...packMismatches(manifest, pack, sha256(raw)));
  return { ok: problems.length === 0, signature, problems };
}
