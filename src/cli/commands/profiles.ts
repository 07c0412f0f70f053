import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { detectHardware, rankProfiles } from "../../profile/detect.js";
import { type ProfileScan, scanProfiles } from "../../profile/load.js";
import type { DeviceProfile } from "../../profile/schema.js";
import { markdownTable } from "../../util/table.js";
import { action, printJson } from "../run.js";

export function registerProfiles(program: Command): void {
  program
    .command("profiles")
    .description(
      "list the device profiles (device-profiles/*.json); --detect picks the one that fits this machine; an invalid profile file is reported (file, field, fix) after the valid ones, and exits 1",
    )
    .option("--detect", "detect this machine's hardware and rank the profiles that fit it")
    .option("--json", "machine-readable output")
    .action(
      action(async (opts: { json?: boolean; detect?: boolean }) => {
        const scan = await scanProfiles();
        const { profiles } = scan;
        try {
          if (opts.detect) return await detect(profiles, opts.json === true);
          if (opts.json) return printJson(profiles);
          const rows = profiles.map((p) => [
            p.name,
            `${p.platform}-${p.arch}`,
            p.cores,
            p.threads,
            p.memory_mb,
            p.quantization,
            p.power.idle_w,
            p.power.tdp_w,
            p.power.meters.join(">"),
          ]);
          console.log(
            markdownTable(
              ["profile", "target", "cores", "threads", "memory MB", "quant", "idle W", "TDP W", "meters"],
              rows,
            ),
          );
        } finally {
          reportInvalid(scan);
        }
      }),
    );
}

/**
 * Each profile file that does not load, as its own error (file, field, fix) on stderr, after the
 * valid ones were listed; any makes the exit 1, so a script or CI notices the broken file.
 */
function reportInvalid(scan: ProfileScan): void {
  if (scan.invalid.length === 0) return;
  for (const e of scan.invalid) process.stderr.write(`${e.format()}\n`);
  const total = scan.invalid.length + scan.profiles.length;
  process.stderr.write(
    `${scan.invalid.length} of ${total} profile files invalid; listed the ${scan.profiles.length} valid ones\n`,
  );
  process.exitCode = 1;
}

async function detect(profiles: DeviceProfile[], json: boolean): Promise<void> {
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
