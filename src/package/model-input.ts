import { stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { IteraError } from "../errors.js";
import { loadModelCard, type ModelCard } from "../model/card.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import { fileWeightPrecision } from "../onnx/index.js";

/** A model folder checked for what a bundle needs: config, tokenizer and the decoder graph. */
export interface ModelInput {
  dir: string;
  id: string;
  version: string;
  /** The quantization the folder already has (the card's, else read from the graph's weights). */
  quant: string;
  card: ModelCard | undefined;
}

const safeName = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

export async function readModelInput(dirArg: string): Promise<ModelInput> {
  const dir = resolve(dirArg);
  const isDir = await stat(dir).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!isDir) {
    throw new IteraError(`model folder '${dirArg}' does not exist`, {
      where: dir,
      fix: "pass --model <folder with genai_config.json, tokenizer.json and the .onnx file> (docs/model-folder.md)",
    });
  }
  const config = await loadGenaiConfig(dir);
  for (const file of ["tokenizer.json", config.model.decoder.filename]) {
    const ok = await stat(join(dir, file)).then(
      (s) => s.isFile() && s.size > 0,
      // tokenizer.json is optional (a model without one takes token ids: `itera-agent run --ids`)
      () => file === "tokenizer.json",
    );
    if (!ok) {
      throw new IteraError(`incomplete model folder: ${file} is missing or empty`, {
        where: join(dir, file),
        fix: "a model folder needs genai_config.json and the ONNX file named in the config, and a non-empty tokenizer.json if it has one",
      });
    }
  }
  const card = await loadModelCard(dir);
  const id = card?.id ?? basename(dir);
  const version = card?.version ?? "0.0.0";
  for (const [what, v] of [
    ["model id", id],
    ["model version", version],
  ] as const) {
    if (!safeName.test(v)) {
      throw new IteraError(`the ${what} '${v}' cannot name a bundle folder`, {
        where: join(dir, card ? "itera.json" : ""),
        fix: "use letters, digits, '.', '_', '+' and '-' only",
      });
    }
  }
  // A graph that cannot even be decoded is refused with its reason by the build's model check
  // (src/package/model-check.ts), which runs before the precision matters.
  const quant =
    card?.quantization.mode ??
    (await fileWeightPrecision(join(dir, config.model.decoder.filename)).catch(() => "fp32"));
  return { dir, id, version, quant, card };
}
