import type { Command } from "commander";
import { buildBundle } from "../../package/build.js";
import { DEFAULT_SERVICE_ARGS } from "../../package/bundle-files.js";
import { buildQuantModes } from "../../package/quantization.js";
import type { QuantizationDecision } from "../../package/quantization.js";
import { action, collect, printJson } from "../run.js";

interface BuildCliOptions {
  model: string;
  profile: string;
  quant?: string;
  quantBudget?: string;
  exclude?: string[];
  calib?: string;
  eval?: string;
  sign?: string;
  out: string;
  force?: boolean;
  version?: string;
  serviceArgs?: string;
  runtime?: string;
  tuned?: string;
  fullIcu?: boolean;
  json?: boolean;
}

export function registerBuild(program: Command): void {
  program
    .command("build")
    .description(
      "package a model for a device: one standalone executable + manifest, unit, installer (.tar.gz beside)",
    )
    .requiredOption(
      "--model <dir>",
      "model folder (genai_config.json, tokenizer.json, the .onnx, itera.json)",
    )
    .requiredOption("--profile <name>", "device profile name (itera profiles) or path to a profile .json")
    .option(
      "--quant <mode>",
      `${buildQuantModes.join(" | ")} (default auto: the profile's precision, mixed per weight within the budget)`,
    )
    .option("--quant-budget <pct>", 'when quantizing: allowed perplexity increase ("2%" default, or "none")')
    .option(
      "--exclude <nodes>",
      "when quantizing: keep these nodes at fp32 (comma list, repeatable)",
      collect,
    )
    .option("--calib <file>", "when quantizing: calibration text for the mixed-precision search")
    .option(
      "--eval <file>",
      "when quantizing: held-out text for the budget (default: the model card's split)",
    )
    .option("--sign <key>", "sign the manifest with this Ed25519 private key (itera keygen)")
    .option("--out <dir>", "output folder", "firmware-bundles")
    .option("--force", "write into a bundle folder holding other files (replaces only its own)")
    .option("--version <v>", "release version (default: the model card's version)")
    .option(
      "--service-args <args>",
      `arguments of ExecStart in itera-agent.service (default "${DEFAULT_SERVICE_ARGS}")`,
    )
    .option(
      "--runtime <bundle>",
      "reuse this earlier bundle's runtime (same profile) unchanged: devices running it take only the new model pack",
    )
    .option(
      "--tuned <file>",
      "carry this tuned.json (itera tune with this build's --profile) in the bundle: the agent's default threads (docs/tune.md); its precision is the default --quant",
    )
    .option(
      "--full-icu",
      "embed Node's full ICU data (every locale) instead of English only (6.7 MB more gzipped)",
    )
    .option("--json", "machine-readable output")
    .action(
      action(async (opts: BuildCliOptions) => {
        const r = await buildBundle({
          model: opts.model,
          profile: opts.profile,
          quant: opts.quant,
          quantBudget: opts.quantBudget,
          exclude: opts.exclude
            ?.flatMap((e) => e.split(","))
            .map((e) => e.trim())
            .filter((e) => e !== ""),
          calib: opts.calib,
          eval: opts.eval,
          sign: opts.sign,
          out: opts.out,
          force: opts.force === true,
          version: opts.version,
          serviceArgs: opts.serviceArgs,
          runtime: opts.runtime,
          tuned: opts.tuned,
          fullIcu: opts.fullIcu === true,
        });
        if (opts.json) {
          return printJson({
            dir: r.dir,
            tarball: r.tarball,
            bundle_id: r.manifest.bundle_id,
            signed: r.manifest.signature !== undefined,
            sizes: r.sizes,
            runtime: r.runtime,
            parts: r.parts,
            strip: r.strip,
            self_check: r.self_check,
            model_check: r.model_check,
            quantization: r.quantization,
            seconds: r.seconds,
          });
        }
        const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
        console.log(`${r.dir}
  ${describeQuantization(r.quantization)}
  executable ${mb(r.sizes.executable)} (node ${mb(r.sizes.node_raw)} -> ${mb(r.sizes.node_stripped)} ${r.strip}; assets ${mb(r.sizes.assets_raw)} stored as ${mb(r.sizes.assets_stored)})
  runtime ${r.runtime.id}${r.runtime.reused_from ? ` (reused from ${r.runtime.reused_from})` : ""} ${mb(r.parts.runtime_bytes)}, model pack ${mb(r.parts.model_pack_bytes)}
  ${r.tarball} ${mb(r.sizes.tarball)}
  ${r.manifest.signature ? "signed (ed25519)" : "not signed (pass --sign KEY)"}, built in ${r.seconds.toFixed(1)} s`);
      }),
    );
}

/** One line: the precision chosen, why, the ONNX size and the measured quality change. */
export function describeQuantization(d: QuantizationDecision): string {
  const m = d.measured;
  const pct = (x: number) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(2)}%`;
  const head = `model ${d.mode} (${d.requested}${d.note ? `; ${d.note}` : ""})`;
  if (!m) return head;
  const budget =
    m.budget_perplexity_increase === null ? "no budget" : `budget ${pct(m.budget_perplexity_increase)}`;
  const size = `ONNX ${(m.onnx_bytes_before / 1e6).toFixed(3)} -> ${(m.onnx_bytes_after / 1e6).toFixed(3)} MB (${m.compression_ratio.toFixed(2)}x smaller)`;
  if (
    m.bits_per_char_before === null ||
    m.bits_per_char_after === null ||
    m.bits_per_char_increase === null ||
    m.perplexity_increase === null
  )
    return `${head}: ${size}, quality ${m.held_out}`;
  return `${head}: ONNX ${(m.onnx_bytes_before / 1e6).toFixed(3)} -> ${(m.onnx_bytes_after / 1e6).toFixed(3)} MB (${m.compression_ratio.toFixed(2)}x smaller), bits/char ${m.bits_per_char_before.toFixed(4)} -> ${m.bits_per_char_after.toFixed(4)} (${pct(m.bits_per_char_increase)}), perplexity ${pct(m.perplexity_increase)} (${budget}) on ${m.held_out}`;
}
