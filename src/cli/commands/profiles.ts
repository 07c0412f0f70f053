import type { Command } from "commander";
import { loadAllProfiles } from "../../profile/load.js";
import { markdownTable } from "../../util/table.js";
import { action, printJson } from "../run.js";

export function registerProfiles(program: Command): void {
  program
    .command("profiles")
    .description("list the device profiles (device-profiles/*.json)")
    .option("--json", "machine-readable output")
    .action(
      action(async (opts: { json?: boolean }) => {
        const profiles = await loadAllProfiles();
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
