import { readFile } from "node:fs/promises";
import { arch, cpus, platform, release, totalmem } from "node:os";
import si from "systeminformation";
import type { Hardware } from "./hardware.js";
import type { DeviceProfile } from "./schema.js";

/**
 * What this machine is (systeminformation for the CPU and memory, the device tree's model string on
 * single-board computers) and which device profile fits it (`itera profiles --detect`).
 */
export type { Hardware } from "./hardware.js";

export async function detectHardware(deviceTreeModelPath = "/proc/device-tree/model"): Promise<Hardware> {
  const [cpu, mem, dt] = await Promise.all([
    si.cpu().catch(() => null),
    si.mem().catch(() => null),
    readFile(deviceTreeModelPath, "utf8").then(
      (t) => t.replace(/\0/g, "").trim() || null,
      () => null,
    ),
  ]);
  const logical = cpu?.cores || cpus().length;
  return {
    platform: platform(),
    arch: arch(),
    kernel: release(),
    cpu: {
      brand: cpu?.brand || cpus()[0]?.model || "unknown",
      manufacturer: cpu?.manufacturer || "unknown",
      cores: logical,
      physical_cores: cpu?.physicalCores || logical,
      speed_ghz: cpu?.speed || 0,
    },
    memory_mb: Math.round((mem?.total ?? totalmem()) / 2 ** 20),
    device_tree_model: dt,
  };
}

export interface ProfileMatch {
  profile: string;
  score: number;
  reasons: string[];
}

/**
 * Rank the profiles for this hardware. A profile must match platform and arch; a device-tree model
 * prefix match (a Raspberry Pi) wins outright; otherwise cores inside the profile's detect range and
 * the closest core count and memory size decide.
 */
export function rankProfiles(hw: Hardware, profiles: DeviceProfile[]): ProfileMatch[] {
  const matches: ProfileMatch[] = [];
  for (const p of profiles) {
    if (p.platform !== hw.platform || p.arch !== hw.arch) continue;
    const reasons = [`${p.platform}-${p.arch}`];
    let score = 10;
    const d = p.detect;
    if (d?.device_tree_model !== undefined) {
      if (hw.device_tree_model?.startsWith(d.device_tree_model)) {
        score += 1000;
        reasons.push(`device tree model '${hw.device_tree_model}'`);
      } else {
        continue; // a board profile only fits that board
      }
    }
    const inRange =
      (d?.min_cores === undefined || hw.cpu.cores >= d.min_cores) &&
      (d?.max_cores === undefined || hw.cpu.cores <= d.max_cores);
    if (inRange && (d?.min_cores !== undefined || d?.max_cores !== undefined)) {
      score += 100;
      reasons.push(`${hw.cpu.cores} cores within ${d?.min_cores ?? 1}..${d?.max_cores ?? "any"}`);
    }
    score -= Math.abs(p.cores - hw.cpu.cores) * 2;
    score -= Math.abs(Math.log2(p.memory_mb / Math.max(1, hw.memory_mb))) * 5;
    matches.push({ profile: p.name, score: Math.round(score * 10) / 10, reasons });
  }
  return matches.sort((a, b) => b.score - a.score);
}
