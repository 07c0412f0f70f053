/**
 * The one way a test makes a temp folder: `tempDir("itera-x-")` makes it under the temp folder and
 * removes it after the test file's last test, whatever the test did with it (an agent's state, a
 * broker's database, a bundle). Importing this module registers that removal (an afterAll on the
 * file's root suite); vitest runs each test file with its own modules, so every file gets its own.
 * Hooks run in stack order, so it runs after the file's own afterAll hooks have stopped the agents and
 * brokers that write there. Outside vitest (a bench/ script using a test helper) nothing is registered.
 */
import { mkdtempSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";

const made = new Set<string>();

/** A new empty folder `<tmpdir>/<prefix>XXXXXX`, removed after the test file. */
export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  made.add(dir);
  return dir;
}

/** tempDir for synchronous code (a describe body, a helper that cannot await). */
export function tempDirSync(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.add(dir);
  return dir;
}

/** Remove the folders made so far (also what the afterAll below runs); safe to call twice. */
export async function removeTempDirs(): Promise<void> {
  const dirs = [...made];
  made.clear();
  // Retries: a child process that was just stopped may still be closing a file in there.
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true, maxRetries: 5 })));
}

// bench/ scripts reuse some test helpers outside vitest (no suite to hook into): they remove their own.
if (process.env.VITEST) afterAll(removeTempDirs);
