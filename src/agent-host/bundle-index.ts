import { z } from "zod";
import type { Manifest } from "../bundle/manifest.js";

/**
 * `bundle.json`, the one asset the executable reads first: the runtime's own index (issue #18: the
 * executable is the runtime part of a bundle and holds no model). It names the profile and target
 * and how each other embedded asset (native add-ons, profile) is stored, with both hashes. Nothing
 * in it depends on the model, the release version or the build time, so the same agent, profile and
 * add-ons give a byte-identical runtime that devices can keep across model-only updates.
 * It is the root of trust at run time: every other asset is checked against it before use, and the
 * release's manifest.json beside the executable must name its sha256 (`parts.runtime.index_sha256`).
 */
export const BUNDLE_INDEX_ASSET = "bundle.json";
export const RUNTIME_INDEX_SCHEMA = "itera.runtime/v1";

/** Asset key prefixes: where each kind of embedded file is extracted to. */
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

export const bundleIndexSchema = z
  .object({
    schema: z.literal(RUNTIME_INDEX_SCHEMA),
    profile: z.string().min(1),
    target: z
      .object({
        platform: z.enum(["linux", "win32"]),
        arch: z.enum(["arm64", "x64"]),
        node: z.string().min(1),
      })
      .strict(),
    build: z.object({ itera_version: z.string(), git_commit: z.string().optional() }).strict(),
    assets: z.record(z.string(), storedAssetSchema),
  })
  .strict();

export type RuntimeIndex = z.infer<typeof bundleIndexSchema>;

/**
 * What agent commands report as the bundle's manifest: the release's manifest.json beside the
 * executable (checked against this runtime and its model pack at start, src/agent-host/release.ts).
 */
export type BundleIndex = Manifest;
