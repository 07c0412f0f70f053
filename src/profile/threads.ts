import { availableParallelism } from "node:os";
import { IteraError } from "../errors.js";

/**
 * How many ONNX Runtime intra-op threads a command runs with. A default (the device profile's, a
 * model's genai_config) never exceeds this host's cores: a bundle built for a 12-core desktop that
 * runs on 2 cores would otherwise start 12 threads, and oversubscribed threads spin and slow every
 * step (issue #14: time to first token 395 ms against 88 ms at 1 thread). A count the user asks for is honoured
 * up to THREADS_PER_CORE × cores (sweeping past the cores can be a deliberate measurement) and
 * refused beyond: ONNX Runtime starts every one of them (`itera run --threads 1024` ran over 60 s).
 */
export const THREADS_PER_CORE = 4;

/** The CPUs this process may use (cgroup and affinity limits included). */
export function hostCores(): number {
  return availableParallelism();
}

/** The largest thread count a command accepts on this host. */
export function maxThreads(cores = hostCores()): number {
  return THREADS_PER_CORE * cores;
}

/**
 * Check a thread count the user gave (`flag` names the option, or the job field, in the error).
 * Returns it unchanged: an explicit count is not capped, only refused when absurd.
 */
export function checkThreads(n: number, flag: string, fix?: string): number {
  if (!Number.isInteger(n) || n < 1) {
    throw new IteraError(`${flag} must be a whole number ≥ 1, not '${n}'`, {
      where: flag,
      fix: fix ?? `give 1 to ${maxThreads()} threads`,
    });
  }
  const cores = hostCores();
  if (n > maxThreads(cores)) {
    throw new IteraError(
      `${flag} ${n} is more than ${THREADS_PER_CORE} threads per core on this host (${cores} cores)`,
      {
        where: flag,
        fix:
          fix ??
          `give at most ${maxThreads(cores)} (threads beyond the cores compete for them; leave --threads out for the default, at most ${cores})`,
      },
    );
  }
  return n;
}

/**
 * A default thread count capped at this host's cores; `note` gets one line when it was capped.
 * `source` says who asked for the count, e.g. "profile 'desktop-x64-12c'".
 */
export function defaultThreads(wanted: number, source: string, note: (line: string) => void): number {
  const cores = hostCores();
  if (wanted <= cores) return wanted;
  note(
    `threads: ${source} asks for ${wanted}, this host has ${cores} cores: running ${cores} (--threads to choose)`,
  );
  return cores;
}

/** A note on stderr (the commands' progress channel). */
export function stderrNote(line: string): void {
  process.stderr.write(`${line}\n`);
}
