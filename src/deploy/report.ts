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
  /**
   * bytes_sent: what this run sent (ssh) or wrote (rootfs); bytes_linked: files the current release
   * already had byte for byte, hard-linked on the device instead (`linked` names them).
   */
  copy?: {
    bytes_total: number;
    bytes_sent: number;
    bytes_resumed: number;
    bytes_linked: number;
    linked: string[];
  };
  /** Which parts of the bundle differ from the device's current release, i.e. had to travel (absent: not probed). */
  parts?: { runtime: boolean; model_pack: boolean };
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

/** One line for people: what travelled, and what the device already had. */
export function copySummary(r: FlashReport): string {
  if (!r.copy) return "";
  const c = r.copy;
  const parts = r.parts
    ? ` (${r.parts.runtime ? "runtime" : ""}${r.parts.runtime && r.parts.model_pack ? " and " : ""}${
        r.parts.model_pack ? "model pack" : ""
      }${!r.parts.runtime && !r.parts.model_pack ? "no part" : ""} changed)`
    : "";
  return `${r.mode === "rootfs" ? "wrote" : "sent"} ${c.bytes_sent} of ${c.bytes_total} bytes${
    c.bytes_linked > 0 ? `, ${c.bytes_linked} linked from the current release` : ""
  }${parts}`;
}
