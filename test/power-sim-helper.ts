import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";

/** The INA219 simulator (tools/ina219-sim) behind a real pseudo-terminal made by socat. */
export interface SimPty {
  port: string;
  /** Trace time (s since the simulator's t=0) of a host monotonic time (performance.now() ms). */
  traceTime(hostMs: number): number;
  stop(): Promise<void>;
  exited: Promise<void>;
}

const SIM = resolve(import.meta.dirname, "..", "tools", "ina219-sim", "ina219_sim.py");

let started = 0;

export async function startSim(dir: string, label: string, args: string[]): Promise<SimPty> {
  const name = `${label}-${++started}`;
  const port = join(dir, `${name}.tty`);
  const startFile = join(dir, `${name}.start`);
  // socat's EXEC address treats ',' and ':' specially: run the simulator through a script instead.
  const script = join(dir, `${name}.sh`);
  const quoted = [...args, "--start-file", startFile].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
  await writeFile(script, `#!/bin/sh\nexec /usr/bin/python3 '${SIM}' ${quoted}\n`);
  await chmod(script, 0o755);
  const socat: ChildProcess = spawn("socat", [`PTY,link=${port},raw,echo=0`, `EXEC:${script}`], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise<void>((r) => socat.once("exit", () => r()));
  for (let i = 0; i < 500 && !(existsSync(port) && existsSync(startFile)); i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  if (!existsSync(port)) throw new Error("socat did not create the pty");
  const startEpochS = Number(readFileSync(startFile, "utf8"));
  return {
    port,
    traceTime: (hostMs) => (performance.timeOrigin + hostMs) / 1000 - startEpochS,
    exited,
    stop: async () => {
      if (socat.exitCode === null) socat.kill("SIGTERM");
      await exited;
    },
  };
}

/** Exact integral of a piecewise-linear trace [[t_s, W], ...] (held constant outside) over [a, b] s. */
export function traceEnergy(points: [number, number][], a: number, b: number): number {
  const at = (t: number): number => {
    if (t <= points[0]![0]) return points[0]![1];
    for (let i = 1; i < points.length; i++) {
      const [t0, p0] = points[i - 1]!;
      const [t1, p1] = points[i]!;
      if (t <= t1) return p0 + ((p1 - p0) * (t - t0)) / (t1 - t0);
    }
    return points[points.length - 1]![1];
  };
  const knots = [a, ...points.map((p) => p[0]).filter((t) => t > a && t < b), b];
  let e = 0;
  for (let i = 1; i < knots.length; i++)
    e += ((at(knots[i - 1]!) + at(knots[i]!)) / 2) * (knots[i]! - knots[i - 1]!);
  return e;
}
