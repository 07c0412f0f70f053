import { join } from "node:path";
import type { Command } from "commander";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { defaultStateDir } from "../../agent/state-dir.js";
import { addTuneOptions, type TuneOptions, tuneCommand } from "../../tune/command.js";
import { TUNED_FILE } from "../../tune/tuned-file.js";
import { action } from "../run.js";

/**
 * `itera-agent tune`: tune the bundle's model on this device (threads × decode path: the model it
 * carries has the precision `itera build` chose); tuned.json goes to the agent's state folder, where
 * `itera-agent run`, `bench` and `serve` read it before the bundle's own.
 */
export function registerAgentTune(program: Command): void {
  addTuneOptions(
    addModelOptions(
      program
        .command("tune")
        .description(
          "measure tokens/s and mJ/token over threads × precision on this device and keep the pick for run, bench and serve",
        )
        .option(
          "--state-dir <dir>",
          "the agent's state folder (default: $STATE_DIRECTORY, else the XDG state folder)",
        ),
    ),
    "where tuned.json goes (default: the state folder's tuned.json, which the agent uses)",
  ).action(
    action(async (opts: TuneOptions & ModelOptions & { stateDir?: string }) => {
      const ctx = await agentContext(opts);
      const out = opts.out ?? join(opts.stateDir ?? defaultStateDir(), TUNED_FILE);
      await tuneCommand(ctx.modelDir, ctx.profile, opts, {
        out,
        replaceOwn: opts.out === undefined,
        ownPrecisionOnly: true,
      });
    }),
  );
}
