import { z } from "zod";
import { type BundleParts, type Manifest, signatureSchema } from "./manifest.js";

/**
 * The model pack (issue #18): the model folder as files `model/<path>` beside the executable, and
 * `model-pack.json`, its own manifest: the model's id, precision and card and every file's sha256,
 * signed with Ed25519 like the bundle manifest (by the same key). The bundle manifest lists these
 * files too and records the pack manifest's sha256 in `parts.model_pack`, so one signature covers
 * both parts; the pack's own signature lets a device that receives only a pack (a model-only
 * update) check who made it without a new bundle manifest from the same source. It holds no build
 * time: the same model files signed by the same key give the same pack, byte for byte.
 */
export const MODEL_PACK_FILE = "model-pack.json";
/** The folder beside the executable that holds the model files; the agent loads its model from it. */
export const MODEL_PACK_DIR = "model";
export const MODEL_PACK_SCHEMA = "itera.model-pack/v1";

const sha = z.string().regex(/^[0-9a-f]{64}$/, "a lower-case hex sha256");

export const modelPackSchema = z
  .object({
    schema: z.literal(MODEL_PACK_SCHEMA),
    model: z
      .object({ id: z.string().min(1), quant: z.string().min(1), card: z.record(z.string(), z.unknown()) })
      .strict(),
    /** Every file of the pack (`model/<path>` -> sha256 and size). */
    files: z.record(
      z.string().regex(/^model\/[A-Za-z0-9_][A-Za-z0-9._-]*(\/[A-Za-z0-9_][A-Za-z0-9._-]*)*$/),
      z.object({ sha256: sha, bytes: z.number().int().nonnegative() }).strict(),
    ),
    signature: signatureSchema().optional(),
  })
  .strict();

export type ModelPack = z.infer<typeof modelPackSchema>;

/** The runtime id: the first 16 hex of the executable's sha256. */
export function runtimeId(executableSha256: string): string {
  return executableSha256.slice(0, 16);
}

/**
 * Why a v2 manifest and the model pack it names do not belong together (empty: they do): the pack's
 * files must be exactly the manifest's `model/` files with the same hashes, and its model the
 * manifest's. `packSha256` is the sha256 of the pack manifest file as it is on disk.
 */
export function packMismatches(m: Manifest, pack: ModelPack, packSha256: string): string[] {
  const parts = m.parts;
  if (!parts) return ["the manifest has no parts (an itera.bundle/v1 manifest)"];
  const problems: string[] = [];
  if (packSha256 !== parts.model_pack.sha256) {
    problems.push(
      `${parts.model_pack.manifest} is not the model pack the manifest names (its sha256 differs)`,
    );
  }
  if (pack.model.id !== parts.model_pack.id || pack.model.quant !== parts.model_pack.quant) {
    problems.push(
      `the model pack holds ${pack.model.id} ${pack.model.quant}, the manifest names ${parts.model_pack.id} ${parts.model_pack.quant}`,
    );
  }
  const inManifest = Object.keys(m.files).filter((f) => f.startsWith(`${MODEL_PACK_DIR}/`));
  for (const f of new Set([...inManifest, ...Object.keys(pack.files)])) {
    const a = m.files[f];
    const b = pack.files[f];
    if (!a || !b || a.sha256 !== b.sha256 || a.bytes !== b.bytes) {
      problems.push(`${f} differs between the bundle manifest and ${parts.model_pack.manifest}`);
    }
  }
  return problems;
}

/** Which part of a bundle a file of its folder belongs to. */
export function partOf(m: Manifest, file: string): keyof BundleParts | "release" {
  if (m.parts?.runtime.file === file) return "runtime";
  if (file === MODEL_PACK_FILE || file.startsWith(`${MODEL_PACK_DIR}/`)) return "model_pack";
  return "release"; // unit, installer, README: small files of the release itself
}

/**
 * The files of `next` that a device already has, byte for byte, in the release `current`: the same
 * name with the same sha256 and size (manifest.json itself never: it is the new release's). A
 * flash links these on the device instead of sending them; the device still checks every file's
 * sha256 before it switches, so a link to a damaged file is caught there.
 */
export function unchangedFiles(next: Manifest, current: Manifest | null): string[] {
  if (!current) return [];
  return Object.entries(next.files)
    .filter(([name, f]) => {
      const old = current.files[name];
      return old !== undefined && old.sha256 === f.sha256 && old.bytes === f.bytes;
    })
    .map(([name]) => name)
    .sort();
}

/** Whether each part of `next` differs from the release `current` (null: no current release). */
export function changedParts(
  next: Manifest,
  current: Manifest | null,
): { runtime: boolean; model_pack: boolean } {
  const same = new Set(unchangedFiles(next, current));
  const changed = (part: keyof BundleParts) =>
    Object.keys(next.files).some((f) => partOf(next, f) === part && !same.has(f));
  if (!next.parts) {
    // A v1 bundle has the model inside its executable: both parts travel in it.
    const exe = !same.has("itera-agent");
    return { runtime: exe, model_pack: exe };
  }
  return { runtime: changed("runtime"), model_pack: changed("model_pack") };
}
