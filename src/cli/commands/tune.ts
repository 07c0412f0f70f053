import type { Command } from "commander";
import { loadProfile } from "../../profile/load.js";
import { addTuneOptions, type TuneOptions, tuneCommand } from "../../tune/command.js";
import { modelTunedFile } from "../../tune/defaults.js";
import { action } from "../run.js";

/** `itera tune <model> --profile P`: measure threads × precision on this host and write tuned.json. */
export function registerTune(program: Command): void {
  addTuneOptions(
    program
      .command("tune")
      .description(
        "measure tokens/s and mJ/token over threads × precision on this host, pick by --objective, write tuned.json",
      )
      .argument("<model>", "model folder (genai_config.json, the .onnx file)")
      .requiredOption("--profile <name>", "device profile: its cores, precisions and power figures"),
    "where tuned.json goes (default: <model>/tuned.json, where itera run and itera bench read it)",
  ).action(
    action(async (model: string, opts: TuneOptions & { profile: string }) => {
      const out = opts.out ?? modelTunedFile(model);
      await tuneCommand(model, await loadProfile(opts.profile), opts, {
        out,
        replaceOwn: opts.out === undefined,
      });
    }),
  );
}
