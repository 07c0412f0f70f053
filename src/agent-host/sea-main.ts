import { IteraError } from "../errors.js";
import { bundleIndex, inBundle } from "./embedded.js";

/**
 * Entry point of the agent in the single executable (src/package/agent-script.ts bundles from here;
 * src/agent-host/sea-loader.ts, the executable's main script, runs it for every command but
 * `--version`): read and validate bundle.json, the root of trust, before anything else (a damaged
 * one stops with one clear message and exit code 3); every other asset is checked against it when
 * it is read (src/agent-host/embedded.ts). Then run the agent CLI, which loads only the command at hand.
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
