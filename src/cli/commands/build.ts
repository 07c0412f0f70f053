import type { Command } from "commander";
import { buildBundle } from "../../package/build.js";
import { DEFAULT_SERVICE_ARGS } from "../../package/bundle-files.js";
import { buildQuantModes } from "../../package/quantization.js";
import { action, printJson } from "../run.js";

interface BuildCliOptions {
  model: string;
  profile: string;
  quant?: string;
  quantBudget?: string;
  sign?: string;
  out: string;
  version?: string;
  serviceArgs?: string;
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
    .option("--quant <mode>", `${buildQuantModes.join(" | ")} (default: the profile's)`)
    .option("--quant-budget <pct>", 'when quantizing: allowed perplexity increase ("2%" default, or "none")')
    .option("--sign <key>", "sign the manifest with this Ed25519 private key (itera keygen)")
    .option("--out <dir>", "output folder", "firmware-bundles")
    .option("--version <v>", "release version (default: the model card's version)")
    .option(
      "--service-args <args>",
      `arguments of ExecStart in itera-agent.service (default "${DEFAULT_SERVICE_ARGS}")`,
    )
    .option("--json", "machine-readable output")
    .action(
      action(async (opts: BuildCliOptions) => {
        const r = await buildBundle({
          model: opts.model,
          profile: opts.profile,
          quant: opts.quant,
          quantBudget: opts.quantBudget,
          sign: opts.sign,
          out: opts.out,
          version: opts.version,
          serviceArgs: opts.serviceArgs,
        });
        if (opts.json) {
          return printJson({
            dir: r.dir,
            tarball: r.tarball,
            bundle_id: r.manifest.bundle_id,
            signed: r.manifest.signature !== undefined,
            sizes: r.sizes,
            strip: r.strip,
            self_check: r.self_check,
            seconds: r.seconds,
          });
        }
        const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
        console.log(`${r.dir}
  executable ${mb(r.sizes.executable)} (node ${mb(r.sizes.node_raw)} -> ${mb(r.sizes.node_stripped)} ${r.strip}; assets ${mb(r.sizes.assets_raw)} stored as ${mb(r.sizes.assets_stored)})
  ${r.tarball} ${mb(r.sizes.tarball)}
  ${r.manifest.signature ? "signed (ed25519)" : "not signed (pass --sign KEY)"}, built in ${r.seconds.toFixed(1)} s`);
      }),
    );
}
