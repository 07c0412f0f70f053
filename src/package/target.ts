import { IteraError } from "../errors.js";
import type { DeviceProfile } from "../profile/schema.js";

/** What a bundle runs on: the profile's platform and architecture. */
export interface Target {
  platform: "linux" | "win32";
  arch: "x64" | "arm64";
}

export type TargetKey = "linux-x64" | "linux-arm64" | "win32-x64";

/** The targets itera can package for: those with both a Node binary on npm and an onnxruntime-node CPU build. */
export const supportedTargets: readonly TargetKey[] = ["linux-x64", "linux-arm64", "win32-x64"];

export function targetKey(t: Target): string {
  return `${t.platform}-${t.arch}`;
}

/** The profile's target, refused with a clear error when itera cannot package for it. */
export function targetOf(profile: DeviceProfile, where: string): Target & { key: TargetKey } {
  const key = targetKey(profile);
  if (!(supportedTargets as readonly string[]).includes(key)) {
    throw new IteraError(`unsupported target ${key} (profile '${profile.name}')`, {
      where,
      fix: `itera packages for ${supportedTargets.join(", ")}; pick a profile with one of these platform/arch pairs`,
    });
  }
  return { platform: profile.platform, arch: profile.arch, key: key as TargetKey };
}

export function hostTarget(): Target & { key: TargetKey } {
  const key = `${process.platform}-${process.arch}`;
  if (!(supportedTargets as readonly string[]).includes(key)) {
    throw new IteraError(`itera build cannot run on ${key}`, {
      fix: `build on ${supportedTargets.join(" or ")}: the SEA blob is made by a Node 24 binary for the build host`,
    });
  }
  return {
    platform: process.platform as Target["platform"],
    arch: process.arch as Target["arch"],
    key: key as TargetKey,
  };
}

export function executableName(t: Target): string {
  return t.platform === "win32" ? "itera-agent.exe" : "itera-agent";
}
