import { readFileSync } from "node:fs";
import { join } from "node:path";
import { IteraError } from "../errors.js";

/** Busy and total jiffies of all CPUs together, from the `cpu` line of /proc/stat. */
export interface CpuTimes {
  busy: number;
  total: number;
}

/** Parse the aggregate `cpu` line of /proc/stat (idle and iowait count as not busy). */
export function parseProcStat(text: string): CpuTimes | null {
  const line = text.split("\n").find((l) => l.startsWith("cpu "));
  if (!line) return null;
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (f.length < 4 || f.some((x) => !Number.isFinite(x) || x < 0)) return null;
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

/** Read /proc/stat under `procRoot` (a fake tree in tests). Synchronous: a few µs, called at 10 Hz. */
export function readCpuTimes(procRoot = "/proc"): CpuTimes {
  const path = join(procRoot, "stat");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read CPU times: ${(e as Error).message}`, {
      where: path,
      fix: "the tdp meter needs Linux /proc/stat; use another meter (--meter) on this system",
    });
  }
  const t = parseProcStat(text);
  if (!t) throw new IteraError("no aggregate 'cpu' line in /proc/stat", { where: path });
  return t;
}

/** CPU utilisation in [0, 1] between two readings (0 when no time passed). */
export function utilisation(a: CpuTimes, b: CpuTimes): number {
  const dt = b.total - a.total;
  if (dt <= 0) return 0;
  return Math.min(1, Math.max(0, (b.busy - a.busy) / dt));
}
