import type { Command } from "commander";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { probeMeters } from "../../power/open.js";
import { loadProfile } from "../../profile/load.js";
import { markdownTable } from "../../util/table.js";
import { action, printJson } from "../run.js";

interface MetersOptions extends ModelOptions {
  port?: string;
  baud: string;
  simulatedMeter?: boolean;
  json?: boolean;
}

/** `itera-agent meters`: which power meters work on this device, in the profile's order, and why not. */
export function registerAgentMeters(program: Command): void {
  addModelOptions(
    program
      .command("meters")
      .description("list the power meters and whether each can measure on this device (and why not)")
      .option("--port <path>", "ina219: serial port of the bridge")
      .option("--baud <rate>", "ina219: baud rate", "115200")
      .option("--simulated-meter", "ina219: the bridge on --port is a simulator (tools/ina219-sim)")
      .option("--json", "machine-readable output"),
  ).action(
    action(async (opts: MetersOptions) => {
      // Listing meters needs the profile, not the model: in development runs --profile alone will do.
      const profile =
        opts.model === undefined && opts.profile !== undefined
          ? await loadProfile(opts.profile)
          : (await agentContext(opts)).profile;
      const probes = await probeMeters({
        profile,
        ...(opts.port ? { port: opts.port } : {}),
        baud: Number(opts.baud),
        ...(opts.simulatedMeter ? { simulated: true } : {}),
      });
      if (opts.json) return printJson(probes);
      console.log(
        markdownTable(
          ["meter", "available", "method", "detail"],
          probes.map((p) => [p.meter, p.available ? "yes" : "no", p.method ?? "", p.detail]),
        ),
      );
    }),
  );
}
