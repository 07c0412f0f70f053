import { stat } from "node:fs/promises";
import { basename } from "node:path";
import type { Command } from "commander";
import { describePrecision } from "../../onnx/precision.js";
import { IteraError } from "../../errors.js";
import { locateModelFile } from "../../model/folder.js";
import { externalRefs, modelFromBytes, readModelFile } from "../../onnx/index.js";
import { analyzeModel, type TensorSignature } from "../../onnx/report.js";
import { sha256 as hashBytes } from "../../util/fs.js";
import { progress } from "../../util/progress.js";
import { markdownTable } from "../../util/table.js";
import { action, collect, printJson } from "../run.js";

/** Parse repeated `--dim name=value` options. */
export function parseDims(specs: string[]): Record<string, number> {
  const dims: Record<string, number> = {};
  for (const spec of specs) {
    const m = /^([^=\s]+)=(\d+)$/.exec(spec.trim());
    if (!m)
      throw new IteraError(`invalid --dim "${spec}"`, {
        where: "--dim",
        fix: "write --dim name=value with a non-negative integer, e.g. --dim sequence_length=128",
      });
    dims[m[1]!] = Number(m[2]);
  }
  return dims;
}

/** Everything `itera inspect` reports, as printed by --json. */
export async function inspectPath(path: string, dims: Record<string, number> = {}) {
  const located = await locateModelFile(path);
  const bytes = await readModelFile(located.onnxPath);
  // Hashing and decoding a large file takes seconds: say so on stderr.
  const status = progress("inspect", 2, { quiet: bytes.byteLength < 256 * 2 ** 20 });
  const sha256 = hashBytes(bytes);
  status.update(1, "hashed");
  const model = await modelFromBytes(bytes, located.onnxPath, { externalData: "verify" });
  const refs = await externalRefs(model, located.onnxPath);
  const externalFiles = [...new Set(refs.map((r) => r.file))];
  const external = await Promise.all(
    externalFiles.map(async (file) => ({ file, bytes: (await stat(file)).size })),
  );
  const report = analyzeModel(model, dims);
  status.done("decoded");
  return {
    file: located.onnxPath,
    via: located.via,
    sha256,
    bytes: bytes.byteLength,
    externalData: external,
    ...report,
  };
}

const shapeText = (s: TensorSignature) => (s.shape ? `[${s.shape.join(", ")}]` : "?");
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MiB`;
const grouped = (n: number) => Math.round(n).toLocaleString("en-US");

function render(r: Awaited<ReturnType<typeof inspectPath>>): string {
  const out: string[] = [];
  out.push(`model:    ${r.file}${r.via === "file" ? "" : ` (via ${r.via})`}`);
  out.push(`sha256:   ${r.sha256}`);
  out.push(
    `size:     ${grouped(r.bytes)} bytes${r.externalData.map((e) => ` + ${basename(e.file)} ${grouped(e.bytes)} bytes`).join("")}`,
  );
  out.push(`ir:       ${r.irVersion}${r.producer ? `, producer ${r.producer}` : ""}`);
  out.push(`opsets:   ${r.opsets.map((o) => `${o.domain} ${o.version}`).join(", ")}`);
  if (r.messagesWithUnknownFields > 0)
    out.push(
      `note:     ${r.messagesWithUnknownFields} message(s) carry fields newer than this tool; they are kept as is`,
    );
  for (const [title, list] of [
    ["inputs", r.inputs],
    ["outputs", r.outputs],
  ] as const)
    out.push(
      "",
      title,
      markdownTable(
        ["name", "type", "shape"],
        list.map((v) => [v.name, v.type, shapeText(v)]),
      ),
    );
  out.push(
    "",
    `parameters: ${grouped(r.parameters.elements)} (${mib(r.parameters.bytes)}); precision: ${describePrecision(r.precision)}`,
    markdownTable(
      ["dtype", "tensors", "elements", "bytes"],
      r.parameters.byDtype.map((d) => [d.dtype, d.tensors, d.elements, d.bytes]),
    ),
  );
  out.push(
    "",
    `nodes: ${r.nodes}`,
    markdownTable(
      ["op", "count"],
      r.ops.map((o) => [o.op, o.count]),
    ),
  );
  if (r.states.pairs.length === 0 && r.states.unpaired.length === 0)
    out.push("", "state tensors: none named past_key_values.N.*, past_N or past_conv.N (DESIGN.md §3)");
  else {
    out.push(
      "",
      `state tensors: ${r.states.pairs.length} pairs`,
      markdownTable(
        ["input", "output", "layer", "kind"],
        r.states.pairs.map((p) => [p.input, p.output, p.layer, p.kind]),
      ),
    );
    if (r.states.unpaired.length > 0) out.push(`unpaired state inputs: ${r.states.unpaired.join(", ")}`);
  }
  const f = r.flops;
  const dimText = Object.entries(f.dims)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
  out.push(
    "",
    `FLOPs per token: ${grouped(f.perToken)} (total ${grouped(f.total)} for ${dimText})`,
    ...(f.dense.total !== f.total
      ? [`FLOPs per token with every expert (dense MoE): ${grouped(f.dense.perToken)}`]
      : []),
    markdownTable(
      ["op", "nodes", "FLOPs", ...(f.dense.total !== f.total ? ["FLOPs, every expert"] : [])],
      f.byOp.map((o) => [o.op, o.nodes, o.flops, ...(f.dense.total !== f.total ? [o.dense ?? o.flops] : [])]),
    ),
  );
  if (f.unresolved.length > 0)
    out.push(`not counted (shapes unknown): ${f.unresolved.map((u) => `${u.node} (${u.op})`).join(", ")}`);
  if (f.missingDims.length > 0)
    out.push(`symbolic dims without a value: ${f.missingDims.join(", ")}: pass --dim name=value`);
  return out.join("\n");
}

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description(
      "show an ONNX model: opsets, inputs/outputs, ops, parameters, state tensors, FLOPs per token",
    )
    .argument("<model>", "an .onnx file or a model folder (genai_config.json names the decoder)")
    .option(
      "--dim <name=value>",
      "value of a symbolic dim for the FLOPs estimate (repeatable; default batch_size=1 sequence_length=1 past_sequence_length=0)",
      collect,
    )
    .option("--json", "machine-readable output")
    .action(
      action(async (model: string, opts: { dim?: string[]; json?: boolean }) => {
        const report = await inspectPath(model, parseDims(opts.dim ?? []));
        if (opts.json) return printJson(report);
        console.log(render(report));
      }),
    );
}
