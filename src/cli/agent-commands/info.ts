import { getHeapStatistics } from "node:v8";
import type { Command } from "commander";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { hardwareOfThisBoot } from "../../agent-host/hardware-cache.js";
import { probeMeters } from "../../power/open.js";
import { VERSION } from "../../version.js";
import { action, printJson } from "../run.js";

/**
 * `itera-agent info`: what this agent is (manifest, profile), where it runs and what it can measure
 * (every power meter probed as `itera-agent meters` does; that command takes --port for an INA219).
 */
export function registerInfo(program: Command): void {
  addModelOptions(
    program
      .command("info")
      .description("the bundle's manifest, the device profile, the detected hardware and power meters")
      .option("--json", "machine-readable output"),
  ).action(
    action(async (opts: ModelOptions & { json?: boolean }) => {
      const ctx = await agentContext(opts);
      const [{ hardware, source }, meters] = await Promise.all([
        hardwareOfThisBoot(),
        probeMeters({ profile: ctx.profile }),
      ]);
      const info = {
        agent: {
          version: VERSION,
          node: process.version,
          mode: ctx.mode,
          executable: process.execPath,
          // The V8 heap limits a bundle starts with (from its profile's memory_mb, src/package/sea.ts).
          exec_argv: process.execArgv,
          heap_limit_mb: Math.round(getHeapStatistics().heap_size_limit / 2 ** 20),
        },
        manifest: ctx.manifest,
        profile: ctx.profile,
        model_dir: ctx.modelDir,
        extraction: ctx.extraction ?? null,
        hardware,
        // "cached": detected by an earlier call in this boot (src/agent-host/hardware-cache.ts)
        hardware_source: source,
        meters,
      };
      if (opts.json) return printJson(info);
      const m = ctx.manifest;
      const lines = [
        `itera-agent ${VERSION} (node ${process.version}, ${ctx.mode} mode, heap limit ${info.agent.heap_limit_mb} MB)`,
        m
          ? `bundle     ${m.bundle_id}: model ${m.model.id} ${m.model.quant}, built ${m.build.built_at}`
          : `model      ${ctx.modelDir} (dev mode: no bundle manifest)`,
        `profile    ${ctx.profile.name}: ${ctx.profile.description}`,
        `hardware   ${hardware.platform}-${hardware.arch}, ${hardware.cpu.cores} cores (${hardware.cpu.brand}), ${hardware.memory_mb} MB${
          hardware.device_tree_model ? `, ${hardware.device_tree_model}` : ""
        }${source === "cached" ? " (detected earlier this boot)" : ""}`,
        `meters     ${meters.map((m) => `${m.meter}${m.available ? "" : " (unavailable)"}`).join(", ")}; the profile prefers ${ctx.profile.power.meters.join(" > ")}`,
      ];
      if (ctx.extraction) {
        lines.push(`extracted  ${ctx.extraction.dir}${ctx.extraction.extracted ? " (this run)" : ""}`);
      }
      console.log(lines.join("\n"));
    }),
  );
}
