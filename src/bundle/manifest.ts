import { z } from "zod";
import { nodeCrypto } from "../util/fs.js";

/**
 * The bundle manifest (DESIGN.md §5): what a bundle is, for which target, and the sha256 of every
 * file and embedded asset, signed with Ed25519 over its canonical JSON (without the signature field).
 *
 * v2 (issue #18) splits a bundle into two parts a device can take separately: the runtime (the
 * executable: Node, agent, onnxruntime, add-ons, profile; no model) and the model pack (the model
 * folder `model/` and its own signed `model-pack.json`). v1 manifests (the model embedded in the
 * executable) are still read, so older bundles verify and flash as before.
 */
const sha = z.string().regex(/^[0-9a-f]{64}$/, "a lower-case hex sha256");

export const BUNDLE_SCHEMA_V1 = "itera.bundle/v1";
export const BUNDLE_SCHEMA = "itera.bundle/v2";

/** The two separately hashed parts of a v2 bundle (each also a file entry of `files`). */
export const partsSchema = z
  .object({
    runtime: z
      .object({
        /** The executable's name in the bundle folder. */
        file: z.string().min(1),
        sha256: sha,
        bytes: z.number().int().nonnegative(),
        /** Derived from the executable's content (its sha256): equal ids, byte-identical runtimes. */
        id: z.string().regex(/^[0-9a-f]{16}$/),
        itera_version: z.string().min(1),
        /** sha256 of the embedded bundle.json: how the running executable knows the manifest is its own. */
        index_sha256: sha,
      })
      .strict(),
    model_pack: z
      .object({
        /** The pack's own signed manifest, beside the executable (model-pack.json). */
        manifest: z.string().min(1),
        /** sha256 of that manifest file, which holds every model file's sha256. */
        sha256: sha,
        /** The pack's bytes: its model files and its manifest. */
        bytes: z.number().int().nonnegative(),
        id: z.string().min(1),
        quant: z.string().min(1),
      })
      .strict(),
  })
  .strict();

export type BundleParts = z.infer<typeof partsSchema>;

export const manifestSchema = z
  .object({
    schema: z.enum([BUNDLE_SCHEMA_V1, BUNDLE_SCHEMA]),
    bundle_id: z.string().min(1), // <model>-<version>-<profile>
    version: z.string().min(1),
    model: z.object({
      id: z.string().min(1),
      quant: z.string().min(1),
      card: z.record(z.string(), z.unknown()),
    }),
    profile: z.string().min(1),
    target: z.object({
      platform: z.enum(["linux", "win32"]),
      arch: z.enum(["arm64", "x64"]),
      node: z.string().min(1),
    }),
    /** Files of the bundle folder (relative path -> sha256 and size), manifest.json itself excluded. */
    files: z.record(z.string(), z.object({ sha256: sha, bytes: z.number().int().nonnegative() })),
    /**
     * Assets embedded in the executable (asset key -> sha256 of the uncompressed content), and how
     * each is stored: `encoding` (identity | br) with the sha256 and size of the stored bytes.
     */
    assets: z.record(
      z.string(),
      z.object({
        sha256: sha,
        bytes: z.number().int().nonnegative(),
        encoding: z.enum(["identity", "br"]).optional(),
        stored_sha256: sha.optional(),
        stored_bytes: z.number().int().nonnegative().optional(),
      }),
    ),
    build: z.object({
      itera_version: z.string(),
      git_commit: z.string().optional(),
      built_at: z.string(),
      host: z.string(),
    }),
    /** v2 only: the runtime and the model pack, each with its hash (see partsSchema). */
    parts: partsSchema.optional(),
    signature: signatureSchema().optional(),
  })
  .strict()
  .superRefine((m, ctx) => {
    if ((m.schema === BUNDLE_SCHEMA) !== (m.parts !== undefined)) {
      ctx.addIssue({
        code: "custom",
        path: ["parts"],
        message: `${BUNDLE_SCHEMA} manifests have parts, ${BUNDLE_SCHEMA_V1} ones do not`,
      });
    }
  });

export type Manifest = z.infer<typeof manifestSchema>;

/** An Ed25519 signature as manifests carry it (the bundle's and the model pack's). */
export function signatureSchema() {
  return z
    .object({ alg: z.literal("ed25519"), public_key: z.string().min(1), value: z.string().min(1) })
    .strict();
}

export type Signature = z.infer<ReturnType<typeof signatureSchema>>;

/** JSON with object keys sorted at every level: the bytes that are signed. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** A document that carries its own signature: the bundle manifest, the model pack's manifest. */
interface Signable {
  signature?: Signature | undefined;
}

function signedBytes(m: Signable): Buffer {
  const { signature: _ignored, ...rest } = m;
  return Buffer.from(canonicalJson(rest), "utf8");
}

/** Sign with an Ed25519 private key (PEM, PKCS#8); the public key (SPKI PEM, base64 of DER) goes along. */
export function signManifest<T extends Signable>(m: T, privateKeyPem: string): T {
  const { createPrivateKey, createPublicKey, sign } = nodeCrypto();
  const key = createPrivateKey(privateKeyPem);
  const pub = createPublicKey(key).export({ type: "spki", format: "der" }).toString("base64");
  const value = sign(null, signedBytes(m), key).toString("base64");
  return { ...m, signature: { alg: "ed25519", public_key: pub, value } };
}

/** The signer's public key as base64 SPKI DER (what `signature.public_key` holds), from PEM or base64. */
export function publicKeyBase64(key: string): string {
  return key.includes("BEGIN")
    ? nodeCrypto().createPublicKey(key).export({ type: "spki", format: "der" }).toString("base64")
    : key.trim();
}

/**
 * Check the signature. With `trustedPublicKey` (base64 SPKI DER or PEM) the signer must be that key;
 * without it only the manifest's own key is used, which proves integrity, not origin.
 */
export function verifyManifestSignature(m: Signable, trustedPublicKey?: string): boolean {
  if (!m.signature) return false;
  const embedded = m.signature.public_key;
  if (trustedPublicKey !== undefined) {
    if (publicKeyBase64(trustedPublicKey) !== embedded) return false;
  }
  const { createPublicKey, verify } = nodeCrypto();
  const key = createPublicKey({ key: Buffer.from(embedded, "base64"), format: "der", type: "spki" });
  return verify(null, signedBytes(m), key, Buffer.from(m.signature.value, "base64"));
}
