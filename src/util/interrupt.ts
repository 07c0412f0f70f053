/**
 * Cleanup on SIGINT/SIGTERM (issue #15): a command registers what it must not leave behind (temp
 * folders and files) and the child processes it runs; when the process is interrupted, the children
 * are killed and waited for (so none writes after the cleanup), every registered cleanup runs, and the
 * process then dies by the same signal (exit status 130/143 in a shell), as it would without us.
 *
 * The handler is installed only while something is registered, and it stands aside when the command
 * has its own handler for the signal (a long-running service shuts down by itself, and its `finally`
 * blocks clean up).
 */
import type { ChildProcess, ExecFileOptions } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";

const SIGNALS = ["SIGINT", "SIGTERM"] as const;
type Sig = (typeof SIGNALS)[number];

/** Cleanups in registration order; they run last-registered first (a temp folder before its parent). */
const cleanups = new Map<symbol, () => void>();
const children = new Set<ChildProcess>();
let installed = false;
let interrupting = false;

function handler(sig: Sig): void {
  // Another listener (a server, a coordinator) owns the shutdown: let it finish its work.
  if (process.listenerCount(sig) > 1 || interrupting) return;
  interrupting = true;
  const running = [...children].filter((c) => c.exitCode === null && c.signalCode === null);
  const exits = running.map((c) => new Promise<void>((done) => c.once("exit", () => done())));
  for (const c of running) c.kill("SIGKILL");
  // Bounded: a child that cannot be reaped must not keep an interrupted command alive.
  const timer = setTimeout(() => finish(sig), 5000);
  void Promise.all(exits).then(() => {
    clearTimeout(timer);
    finish(sig);
  });
}

/** Synchronous from the cleanups to the signal: no other JavaScript runs in between. */
function finish(sig: Sig): void {
  for (const fn of [...cleanups.values()].reverse()) {
    try {
      fn();
    } catch {
      // One cleanup failing must not keep the others from running.
    }
  }
  cleanups.clear();
  uninstall();
  process.kill(process.pid, sig);
}

const listeners: Record<Sig, () => void> = {
  SIGINT: () => handler("SIGINT"),
  SIGTERM: () => handler("SIGTERM"),
};

function install(): void {
  if (installed) return;
  installed = true;
  for (const s of SIGNALS) process.on(s, listeners[s]);
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  for (const s of SIGNALS) process.off(s, listeners[s]);
}

function maybeUninstall(): void {
  if (cleanups.size === 0 && children.size === 0 && !interrupting) uninstall();
}

/** Run `fn` (synchronously) if the process is interrupted before the returned release is called. */
export function onInterrupt(fn: () => void): () => void {
  const key = Symbol();
  cleanups.set(key, fn);
  install();
  return () => {
    cleanups.delete(key);
    maybeUninstall();
  };
}

/** Remove `path` (a file or a whole folder) if the process is interrupted before release. */
export function removeOnInterrupt(path: string): () => void {
  return onInterrupt(() => rmSync(path, { recursive: true, force: true }));
}

/**
 * `mkdtemp` that cannot leak: the cleanup is registered (and the handler installed) before the
 * folder exists, and the folder is made synchronously, so no signal can land between its creation
 * and its registration. `release` when the folder is gone (or kept on purpose).
 */
export function tempDirRemovedOnInterrupt(prefix: string): { path: string; release: () => void } {
  let path: string | undefined;
  const release = onInterrupt(() => {
    if (path !== undefined) rmSync(path, { recursive: true, force: true });
  });
  try {
    path = mkdtempSync(prefix);
  } catch (e) {
    release();
    throw e;
  }
  return { path, release };
}

/** True once SIGINT/SIGTERM started the cleanup: work still running is being abandoned. */
export function interrupted(): boolean {
  return interrupting;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
}

/**
 * `promisify(execFile)` for commands that write: the child is killed (and waited for) when the
 * process is interrupted, so it cannot write into a temp folder after that folder was removed.
 * A failure rejects with the child's `stdout`/`stderr` on the error, as promisify(execFile) does.
 */
export function execTracked(
  file: string,
  args: readonly string[],
  opts: ExecFileOptions = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    // node:child_process (with net and dgram) on first use: most of the agent's commands never spawn.
    const { execFile } = process.getBuiltinModule("node:child_process");
    const child = execFile(file, args, { ...opts, encoding: "utf8" }, (err, stdout, stderr) => {
      children.delete(child);
      maybeUninstall();
      if (err) reject(Object.assign(err, { stdout, stderr }));
      else resolve({ stdout: String(stdout), stderr: String(stderr) });
    });
    children.add(child);
    install();
  });
}
