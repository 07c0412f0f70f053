import type { Command } from "commander";
import { IteraError } from "../errors.js";

/**
 * Wrap a command action: an IteraError becomes one clear message (or a JSON object with --json)
 * and a non-zero exit; any other error is a bug and keeps its stack.
 */
export function action<A extends unknown[]>(
  fn: (...args: A) => Promise<void> | void,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      const json = args.some(
        (a) => typeof a === "object" && a !== null && (a as { json?: unknown }).json === true,
      );
      if (e instanceof IteraError) {
        if (json) process.stdout.write(`${JSON.stringify(e.toJSON())}\n`);
        process.stderr.write(`${e.format()}\n`);
        process.exitCode = e.exitCode;
      } else {
        process.stderr.write(
          `internal error (please report): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
        );
        process.exitCode = 70;
      }
    }
  };
}

/** Print a value as pretty JSON on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Collect a repeatable option (`--dim a=1 --dim b=2`). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export type Register = (program: Command) => void;
