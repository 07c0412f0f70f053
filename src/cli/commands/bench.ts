import type { Command } from "commander";
import { addBenchOptions, type BenchOptions, benchCommand } from "../../bench/command.js";
import { IteraError } from "../../errors.js";
import { detectHardware, rankProfiles } from "../../profile/detect.js";
import { loadAllProfiles, loadProfile } from "../../profile/load.js";
import type { DeviceProfile } from "../../profile/schema.js";
import { modelTunedFile, withTunedBench } from "../../tune/defaults.js";
import { action } from "../run.js";

/** The named profile, else the one that best fits this host (as `itera profiles --detect`). */
async function hostProfile(name: string | undefined, quiet: boolean): Promise<DeviceProfile> {
  if (name) return loadProfile(name);
  const best = rankProfiles(await detectHardware(), await loadAllProfiles())[0];
  if (!best) {
    throw new IteraError("no device profile fits this host", {
      where: "device-profiles/",
      fix: "pass --profile NAME (see `itera profiles`)",
    });
  }
  if (!quiet)
    process.stderr.write(
      `profile: ${best.profile} (detected: ${best.reasons.join(", ")}; --profile to choose)\n`,
    );
  return loadProfile(best.profile);
}

/** `itera bench <model folder>`: llama-bench style speed and energy benchmark on this host. */
export function registerBench(program: Command): void {
  addBenchOptions(
    program
      .command("bench")
      .description("benchmark a model folder on this host: pp/tg tests, tokens/s, latency, energy (mJ/token)")
      .argument("<model>", "model folder (genai_config.json, tokenizer.json, the ONNX file)")
      .option("--profile <name>", "device profile for power figures and bench defaults (default: detected)"),
  ).action(
    action(async (model: string, opts: BenchOptions & { profile?: string }) => {
      const profile = await hostProfile(opts.profile, opts.quiet === true);
      await benchCommand(model, profile, await withTunedBench(opts, [modelTunedFile(model)], model));
    }),
  );
}
