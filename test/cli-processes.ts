/**
 * `itera` commands as a user runs them, in child processes (dist/cli/itera.js): long-running ones
 * (simulate, dashboard) with their stderr collected, and ones run to their end.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import { until } from "./mqtt-helpers.js";

const CLI = resolve("dist/cli/itera.js");

/** A long-running `itera` command whose stderr is collected. */
export function start(args: string[]): { proc: ChildProcess; stderr: () => string } {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
  });
  proc.stdout!.resume();
  return { proc, stderr: () => err };
}

/** Run an `itera` command to its end. */
export function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const proc = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    proc.stdout!.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    proc.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    proc.once("exit", (code) => done({ code, stdout, stderr }));
  });
}

/** SIGTERM a started command and wait for it to exit. */
export async function stop(p: ChildProcess | undefined): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  await new Promise<void>((r) => {
    p.once("exit", () => r());
    p.kill("SIGTERM");
  });
}

/** `itera fleet simulate`: two devices (rpi4, laptop-x64-4c) of `fleet` on `broker`, their state in `stateDir`. */
export function startSimulatedFleet(o: {
  broker: string;
  fleet: string;
  model: string;
  stateDir: string;
  telemetryIntervalS: number;
}): { proc: ChildProcess; stderr: () => string } {
  return start([
    "fleet",
    "simulate",
    "--devices",
    "2",
    "--broker",
    o.broker,
    "--fleet",
    o.fleet,
    "--model",
    o.model,
    "--state-dir",
    o.stateDir,
    "--telemetry-interval",
    String(o.telemetryIntervalS),
    "--profiles",
    "rpi4,laptop-x64-4c",
  ]);
}

/** Start `itera fleet dashboard --port 0 ...args` and wait for the address it prints. */
export async function startDashboard(
  args: string[],
): Promise<{ proc: ChildProcess; stderr: () => string; url: string }> {
  const d = start(["fleet", "dashboard", "--port", "0", ...args]);
  await until(() => /dashboard: (http:\/\/\S+?)\//.test(d.stderr()), "the dashboard's address", 60_000);
  return { ...d, url: d.stderr().match(/dashboard: (http:\/\/\S+?)\//)![1]! };
}
