import { availableParallelism, cpus, hostname } from "node:os";
import { z } from "zod";
import { readModelJson } from "../model/json-file.js";

/**
 * `tuned.json` (docs/tune.md): what `itera tune` measured on one host and what it picked. `itera run`,
 * `itera bench` and the agent's run, bench and serve take their default threads from it; it is
 * valid only on the CPU it was measured on (`host`), so a file copied from another machine is ignored.
 */
export const TUNED_FILE = "tuned.json";
export const TUNED_SCHEMA = "itera.tuned/v1";

export const objectives = ["speed", "energy"] as const;
export const decodePaths = ["fused", "step"] as const;
export type Objective = (typeof objectives)[number];

const median = z.object({ median: z.number().nonnegative(), samples: z.array(z.number().nonnegative()) });

export const gridRowSchema = z
  .object({
    precision: z.string().min(1),
    threads: z.number().int().positive(),
    /** tg tests: one ONNX Runtime call per token (step) or many (fused); absent for pp tests. */
    decode: z.enum(decodePaths).optional(),
    tokens_per_s: median,
    /** Null when the meter gave no valid figure for this candidate (or energy was not measured). */
    mJ_per_token: median.nullable(),
  })
  .strict();

export const hostFactsSchema = z
  .object({
    cpu_model: z.string(),
    cores: z.number().int().positive(),
    platform: z.string(),
    arch: z.string(),
    hostname: z.string(),
  })
  .strict();

export const tunedSchema = z
  .object({
    schema: z.literal(TUNED_SCHEMA),
    model: z.string(),
    profile: z.string(),
    objective: z.enum(objectives),
    /** Speed: candidates within this fraction of the fastest median count as equally fast. */
    tolerance: z.number().nonnegative().max(1),
    host: hostFactsSchema,
    test: z.string().regex(/^(pp|tg) \d+$/),
    rounds: z.number().int().positive(),
    energy: z.object({ method: z.string(), uncertainty: z.string() }).strict().nullable(),
    skipped: z.array(z.object({ precision: z.string(), reason: z.string() }).strict()),
    grid: z.array(gridRowSchema).min(1),
    pick: z
      .object({
        precision: z.string(),
        threads: z.number().int().positive(),
        decode: z.enum(decodePaths).optional(),
      })
      .strict(),
    itera_version: z.string(),
    runtime: z.string(),
    measured_at: z.string(),
  })
  .strict()
  .refine((t) => t.grid.some((r) => sameCandidate(r, t.pick)), {
    message: "the pick is not a row of the grid",
    path: ["pick"],
  });

export type Tuned = z.infer<typeof tunedSchema>;
export interface Choice {
  precision: string;
  threads: number;
  decode?: (typeof decodePaths)[number] | undefined;
}

/** Whether a grid row is the candidate `c` (precision, threads and decode path). */
export function sameCandidate(r: Choice, c: Choice): boolean {
  return r.precision === c.precision && r.threads === c.threads && r.decode === c.decode;
}
export type GridRow = z.infer<typeof gridRowSchema>;
export type HostFacts = z.infer<typeof hostFactsSchema>;

/** This host as a tuned.json records it: a tuning holds for the same CPU model and core count. */
export function hostFacts(): HostFacts {
  return {
    cpu_model: cpus()[0]?.model.trim() ?? "unknown",
    // The CPUs this process may use, as src/profile/threads.ts counts them (not imported: `itera build`
    // reads tuned.json, and that module's fixes name --threads, which build does not take).
    cores: availableParallelism(),
    platform: process.platform,
    arch: process.arch,
    hostname: hostname(),
  };
}

/** Why a tuning measured on `measured` does not hold here (undefined: it does). */
export function otherHost(measured: HostFacts, here: HostFacts = hostFacts()): string | undefined {
  if (measured.cpu_model !== here.cpu_model)
    return `measured on '${measured.cpu_model}', this host is '${here.cpu_model}'`;
  if (measured.cores !== here.cores)
    return `measured with ${measured.cores} cores, this host has ${here.cores}`;
  if (measured.arch !== here.arch) return `measured on ${measured.arch}, this host is ${here.arch}`;
  return undefined;
}

/** Read and validate a tuned.json: one IteraError naming the file and field when it is not one. */
export async function readTuned(path: string, opts: { optional: true }): Promise<Tuned | undefined>;
export async function readTuned(path: string, opts?: { optional?: false }): Promise<Tuned>;
export async function readTuned(path: string, opts: { optional?: boolean } = {}): Promise<Tuned | undefined> {
  const fix = "run `itera tune` (or `itera-agent tune`) again to write a new one, or remove the file";
  return opts.optional
    ? readModelJson(path, tunedSchema, { optional: true, fix })
    : readModelJson(path, tunedSchema, { fix });
}
