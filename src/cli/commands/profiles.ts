import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { detectHardware, rankProfiles } from "../../profile/detect.js";
import { loadAllProfiles } from "../../profile/load.js";
import { markdownTable } from "../../util/table.js";
import { action, printJson } from "../run.js";

export function registerProfiles(program: Command): void {
  program
    .command("profiles")
    .description(
      "list the device profiles (device-profiles/*.json); --detect picks the one that fits this machine",
    )
    .option("--detect", "detect this machine's hardware and rank the profiles that fit it")
    .option("--json", "machine-readable output")
    .action(
      action(async (opts: { json?: boolean; detect?: boolean }) => {
        const profiles = await loadAllProfiles();
        if (opts.detect) return detect(profiles, opts.json === true);
        if (opts.json) return printJson(profiles);
        const rows = profiles.map((p) => [
          p.name,
          `${p.platform}-${p.arch}`,
          p.cores,
          p.memory_mb,
          p.quantization,
          p.power.idle_w,
          p.power.tdp_w,
          p.power.meters.join(">"),
        ]);
        console.log(
          markdownTable(
            ["profile", "target", "cores", "memory MB", "quant", "idle W", "TDP W", "meters"],
            rows,
          ),
        );
      }),
    );
}

async function detect(profiles: Awaited<ReturnType<typeof loadAllProfiles>>, json: boolean): Promise<void> {
  const hardware = await detectHardware();
  const ranking = rankProfiles(hardware, profiles);
  const best = ranking[0];
  if (json) return printJson({ profile: best?.profile ?? null, hardware, ranking });
  if (!best) {
    throw new IteraError(`no device profile fits this ${hardware.platform}-${hardware.arch} machine`, {
      where: "device-profiles/",
      fix: "write a profile for it (copy the closest one in device-profiles/ and adjust cores, memory and power)",
    });
  }
  console.log(`${best.profile}`);
  process.stderr.write(
    `detected ${hardware.platform}-${hardware.arch}, ${hardware.cpu.cores} cores (${hardware.cpu.brand}), ${hardware.memory_mb} MB` +
      `${hardware.device_tree_model ? `, '${hardware.device_tree_model}'` : ""}; ${best.reasons.join(", ")}\n`,
  );
}
