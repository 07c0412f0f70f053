import type { EvaluationRecord, ModelCard } from "../src/model/card.js";

/** A valid itera.json for the toy recurrent fixture model, claiming the given evaluation figures. */
export function toyModelCard(evaluation: EvaluationRecord[]): ModelCard {
  return {
    schema: "itera.model/v1",
    id: "toy",
    name: "toy",
    version: "0.1.0",
    architecture: { family: "recurrent" },
    parameters: 1000,
    flops_per_token: 2000,
    quantization: { mode: "fp32" },
    tokenizer: { type: "char", vocab_size: 63 },
    evaluation,
  };
}
