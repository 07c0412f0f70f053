import { z } from "zod";
import { manifestSchema } from "../bundle/manifest.js";

/**
 * `bundle.json`, the one asset the executable reads first: the manifest without the parts that
 * depend on the finished executable (`files`, `signature`), plus how each other asset is stored.
 * It is the root of trust at run time: every other asset is checked against it before use.
 */
export const BUNDLE_INDEX_ASSET = "bundle.json";

/** Asset key prefixes: where each kind of embedded file is extracted to. */
export const MODEL_PREFIX = "model/";
export const NATIVE_PREFIX = "native/";
export const PROFILE_ASSET = "profile.json";

const sha = z.string().regex(/^[0-9a-f]{64}$/);

export const storedAssetSchema = z
  .object({
    sha256: sha,
    bytes: z.number().int().nonnegative(),
    encoding: z.enum(["identity", "br"]),
    stored_sha256: sha,
    stored_bytes: z.number().int().nonnegative(),
  })
  .strict();

export type StoredAsset = z.infer<typeof storedAssetSchema>;

export const bundleIndexSchema = manifestSchema
  .omit({ files: true, signature: true, assets: true })
  .extend({ assets: z.record(z.string(), storedAssetSchema) })
  .strict();

export type BundleIndex = z.infer<typeof bundleIndexSchema>;
