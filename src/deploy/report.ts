import type { VerifiedBundle } from "./bundle.js";
import type { StepRecord } from "./steps.js";

/** What `itera flash` reports (the --json summary), for both the ssh and the rootfs mode. */
export interface FlashReport {
  ok: boolean;
  mode: "ssh" | "rootfs";
  dry_run: boolean;
  device: string;
  bundle_id: string;
  version: string;
  profile: string;
  arch: string;
  /** True when the signer was pinned with --key; false when only the manifest's own key was checked. */
  signer_pinned: boolean;
  result: "installed" | "rolled-back" | "planned" | "written-to-rootfs";
  /** Release versions before and after (null: none). */
  previous: string | null;
  current: string | null;
  copy?: { bytes_total: number; bytes_sent: number; bytes_resumed: number };
  health?: { ok: boolean; info?: unknown; error?: string };
  rollback?: { to: string | null; healthy: boolean | null };
  error?: { error: string; where?: string; fix?: string };
  steps: StepRecord[];
}

/** `releases/0.2.0` -> `0.2.0`. */
export function versionOfLink(target: string | null | undefined): string | null {
  if (!target) return null;
  return target.split("/").filter(Boolean).at(-1) ?? null;
}

/** A report before any device step: what is being flashed where. */
export function newReport(
  mode: FlashReport["mode"],
  device: string,
  bundle: VerifiedBundle,
  dryRun: boolean,
  steps: StepRecord[],
): FlashReport {
  const m = bundle.manifest;
  return {
    ok: true,
    mode,
    dry_run: dryRun,
    device,
    bundle_id: m.bundle_id,
    version: m.version,
    profile: m.profile,
    arch: m.target.arch,
    signer_pinned: bundle.signerPinned,
    result: "planned",
    previous: null,
    current: null,
    steps,
  };
}
