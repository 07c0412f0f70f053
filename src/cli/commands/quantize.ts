import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { MODES, PRECISIONS, parseQuantizeOptions } from "../../quantize/options.js";
import { type QuantizeReport, quantizeFolder } from "../../quantize/quantize.js";
import { markdownTable } from "../../util/table.js";
import { action, collect, printJson } from "../run.js";

const mb = (b: number) => (b >= 100_000 ? `${(b / 1e6).toFixed(3)} MB` : `${(b / 1e3).toFixed(1)} kB`);
const pct = (x: number) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(2)}%`;

function dtypes(r: QuantizeReport["size"]["before"]): string {
  return Object.entries(r.by_dtype)
    .map(([k, v]) => `${k} ${mb(v)}`)
    .join(", ");
}

/** The human-readable report: a summary table and one row per quantizable node. */
export function formatReport(r: QuantizeReport): string {
  const q = r.quality;
  const summary = markdownTable(
    ["", "before", "after", "change"],
    [
      [
        "ONNX on disk",
        mb(r.size.before.file_bytes),
        mb(r.size.after.file_bytes),
        `${r.size.compression_ratio.toFixed(2)}x smaller`,
      ],
      ["weights by dtype", dtypes(r.size.before), dtypes(r.size.after), ""],
      ...(q
        ? [
            [
              "bits/char",
              q.before.bits_per_char.toFixed(4),
              q.after.bits_per_char.toFixed(4),
              pct(q.bits_per_char_increase),
            ],
            [
              "perplexity",
              q.before.perplexity.toFixed(4),
              q.after.perplexity.toFixed(4),
              pct(q.perplexity_increase),
            ],
          ]
        : [["bits/char, perplexity", "not measured", "not measured", ""]]),
      [
        "decode tokens/s",
        r.speed.before_tokens_per_s.toFixed(1),
        r.speed.after_tokens_per_s.toFixed(1),
        `${r.speed.ratio.toFixed(2)}x`,
      ],
      [
        "top-1 agreement",
        "",
        `${(r.agreement.top1_agreement * 100).toFixed(1)}%`,
        `${r.agreement.positions} positions, ${r.agreement.prompts} prompts`,
      ],
      ["max abs logit diff", "", r.agreement.max_abs_logit_diff.toFixed(4), ""],
    ],
  );
  const layers = markdownTable(
    ["node", "kind", "shape", "precision", "sensitivity (nats/token)", "note"],
    r.layers.map((l) => [
      l.name,
      l.head ? "head" : l.kind,
      l.shape.join("x"),
      l.precision,
      l.sensitivity
        ? Object.entries(l.sensitivity)
            .map(([p, d]) => `${p} ${(d as number).toFixed(4)}`)
            .join(", ")
        : "",
      l.note ?? "",
    ]),
  );
  const budget =
    r.settings.budget_perplexity_increase === null
      ? "no budget"
      : q
        ? `budget perplexity +${(r.settings.budget_perplexity_increase * 100).toFixed(2)}%: within`
        : "budget not checked";
  return [
    `quantized (${r.mode}) ${r.source} in ${r.seconds.toFixed(1)} s: ${r.precision}; ${budget}`,
    q
      ? `held-out text: ${q.text.source}, ${q.text.chars} characters`
      : `quality NOT measured: ${r.quality_not_measured}`,
    "",
    summary,
    "",
    layers,
  ].join("\n");
}

export function registerQuantize(program: Command): void {
  program
    .command("quantize")
    .description(
      "quantize a model folder's ONNX graph (int8, int4, int8 weight-only, fp16, or auto mixed precision)",
    )
    .argument("<model>", "model folder (genai_config.json, tokenizer.json, the .onnx file)")
    .requiredOption("--out <dir>", "output model folder (written only when the result fits the budget)")
    .option("--mode <mode>", `${MODES.join(" | ")}`, "int8")
    .option("--block-size <n>", "block size along K for int4/int8 weight-only (power of two >= 16)", "32")
    .option("--symmetric", "symmetric weights (default: asymmetric block-wise, symmetric int8)")
    .option("--no-symmetric", "asymmetric weights, int8 included (zero points)")
    .option("--no-clip-search", "block-wise: always use each block's full range (no least-squares clipping)")
    .option("--accuracy-level <n>", "MatMulNBits compute: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8", "4")
    .option(
      "--moe-scales <row|block>",
      "MoE experts (QMoE): one scale per row (onnxruntime's fast path), or block-wise with --block-size",
      "row",
    )
    .option("--moe-zero-points", "MoE experts (QMoE): asymmetric, with zero points (default symmetric)")
    .option("--per-channel", "int8 dynamic: one weight scale per output column")
    .option("--reduce-range", "int8 dynamic: 7-bit weights (for x64 CPUs without VNNI)")
    .option("--exclude <nodes>", "keep these nodes at fp32 (comma list, repeatable)", collect, [])
    .option("--head <precision>", `output head precision: ${PRECISIONS.join(" | ")}`)
    .option("--embedding <precision>", `embedding table precision: ${PRECISIONS.join(" | ")}`)
    .option("--budget <pct>", 'allowed perplexity increase on held-out text ("2%", or "none")', "2%")
    .option("--calib <file>", "calibration text for --mode auto (default: the start of the dataset)")
    .option("--eval <file>", "held-out text (default: the model card's evaluation split)")
    .option("--calib-chars <n>", "characters of calibration text", "2000")
    .option("--eval-chars <n>", "characters of held-out text", "4000")
    .option("--force", "write into a folder that holds other files (only the quantizer's own are replaced)")
    .option("--quiet", "no progress on stderr")
    .option("--json", "machine-readable report")
    .action(
      action(
        async (
          model: string,
          raw: Record<string, unknown> & { out: string; json?: boolean; quiet?: boolean; force?: boolean },
        ) => {
          if (!raw.out)
            throw new IteraError("--out is required", { fix: "give the output folder with --out DIR" });
          const opts = parseQuantizeOptions(raw);
          const report = await quantizeFolder(model, raw.out, opts, {
            quiet: raw.quiet === true || raw.json === true,
            force: raw.force === true,
          });
          if (raw.json) return printJson(report);
          console.log(formatReport(report));
          console.log(`\nwrote ${raw.out}`);
        },
      ),
    );
}
