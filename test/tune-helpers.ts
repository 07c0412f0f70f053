import { type GridRow, hostFacts, TUNED_SCHEMA, type Tuned } from "../src/tune/tuned-file.js";

/** A measured grid row with one round. */
export const rowOf = (precision: string, threads: number, tps: number, mj: number): GridRow => ({
  precision,
  threads,
  tokens_per_s: { median: tps, samples: [tps] },
  mJ_per_token: { median: mj, samples: [mj] },
});

/**
 * A tuning of itera-lite-micro measured on this host, whose pick (fp32, 2 threads) is not what any
 * command would choose by itself (1 thread).
 */
export function tuning(over: Partial<Tuned> = {}): Tuned {
  return {
    schema: TUNED_SCHEMA,
    model: "itera-lite-micro",
    profile: "laptop-x64-4c",
    objective: "energy",
    tolerance: 0.05,
    host: hostFacts(),
    test: "tg 64",
    rounds: 3,
    energy: { method: "tdp-estimate", uncertainty: "model estimate" },
    skipped: [],
    grid: [rowOf("fp32", 1, 900, 3), rowOf("fp32", 2, 1000, 2), rowOf("int8", 1, 800, 4)],
    pick: { precision: "fp32", threads: 2 },
    itera_version: "test",
    runtime: "onnxruntime test",
    measured_at: new Date().toISOString(),
    ...over,
  };
}
