import { IteraError } from "../errors.js";
import { bundleIndex, inBundle } from "./embedded.js";

/**
 * Entry point of the single executable (src/package/agent-script.ts bundles from here): check every
 * embedded asset against bundle.json before any code that uses them is even loaded, so a tampered
 * executable stops with one clear message and exit code 3; then run the agent CLI.
 */
try {
  if (inBundle()) bundleIndex();
} catch (e) {
  if (!(e instanceof IteraError)) throw e;
  process.stderr.write(`${e.format()}\n`);
  process.exit(e.exitCode);
}

import("../cli/itera-agent.js").catch((e: unknown) => {
  process.stderr.write(
    `internal error (please report): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
  );
  process.exitCode = 70;
});
