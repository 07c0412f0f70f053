import type { Command } from "commander";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { addBenchOptions, type BenchOptions, benchCommand } from "../../bench/command.js";
import { defaultStateDir } from "../../agent/state-dir.js";
import { agentTunedFiles, withTunedBench } from "../../tune/defaults.js";
import { action } from "../run.js";

/** `itera-agent bench`: benchmark the bundle's model on this device with its profile's meters. */
export function registerAgentBench(program: Command): void {
  addBenchOptions(
    addModelOptions(
      program
        .command("bench")
        .description("benchmark the model on this device: pp/tg tests, tokens/s, latency, energy (mJ/token)"),
    ),
  ).action(
    action(async (opts: BenchOptions & ModelOptions) => {
      const ctx = await agentContext(opts);
      const tuned = agentTunedFiles(defaultStateDir(), ctx.modelDir);
      await benchCommand(ctx.modelDir, ctx.profile, await withTunedBench(opts, tuned, ctx.modelDir));
    }),
  );
}
