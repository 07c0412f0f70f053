import { createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { z } from "zod";

/**
 * The bundle manifest (DESIGN.md §5): what a bundle is, for which target, and the sha256 of every
 * file and embedded asset, signed with Ed25519 over its canonical JSON (without the signature field).
 */
const sha = z.string().regex(/^[0-9a-f]{64}$/, "a lower-case hex sha256");

export const manifestSchema = z
  .object({
    schema: z.literal("itera.bundle/v1"),
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
    signature: z
      .object({ alg: z.literal("ed25519"), public_key: z.string().min(1), value: z.string().min(1) })
      .optional(),
  })
  .strict();

export type Manifest = z.infer<typeof manifestSchema>;

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

function signedBytes(m: Manifest): Buffer {
  const { signature: _ignored, ...rest } = m;
  return Buffer.from(canonicalJson(rest), "utf8");
}

/** Sign with an Ed25519 private key (PEM, PKCS#8); the public key (SPKI PEM, base64 of DER) goes along. */
export function signManifest(m: Manifest, privateKeyPem: string): Manifest {
  const key = createPrivateKey(privateKeyPem);
  const pub = createPublicKey(key).export({ type: "spki", format: "der" }).toString("base64");
  const value = sign(null, signedBytes(m), key).toString("base64");
  return { ...m, signature: { alg: "ed25519", public_key: pub, value } };
}

/**
 * Check the signature. With `trustedPublicKey` (base64 SPKI DER or PEM) the signer must be that key;
 * without it only the manifest's own key is used, which proves integrity, not origin.
 */
export function verifyManifestSignature(m: Manifest, trustedPublicKey?: string): boolean {
  if (!m.signature) return false;
  const embedded = m.signature.public_key;
  if (trustedPublicKey !== undefined) {
    const trusted = trustedPublicKey.includes("BEGIN")
      ? createPublicKey(trustedPublicKey).export({ type: "spki", format: "der" }).toString("base64")
      : trustedPublicKey.trim();
    if (trusted !== embedded) return false;
  }
  const key = createPublicKey({ key: Buffer.from(embedded, "base64"), format: "der", type: "spki" });
  return verify(null, signedBytes(m), key, Buffer.from(m.signature.value, "base64"));
}
