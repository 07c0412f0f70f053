import { z } from "zod";
import type { Manifest } from "../bundle/manifest.js";
import { energyResultSchema, benchResultSchema as producedResultSchema } from "../bench/result.js";
import { decodePaths, objectives, tunedSchema } from "../tune/tuned-file.js";
import { idSchema } from "./topics.js";

/**
 * zod schemas of every MQTT payload in DESIGN.md §8, shared by the agent and the coordinator.
 * Timestamps (`ts`, `deadline`) are Unix epoch milliseconds. Receivers validate every payload with
 * these; objects are loose (unknown extra fields pass) so that a newer agent can add fields.
 */
export const PROTOCOL_VERSION = 1;
const v = z.literal(PROTOCOL_VERSION);
const ts = z.number().int().nonnegative();
const bdSeq = z.number().int().nonnegative();
const num = z.number().finite();

export const stateSchema = z.looseObject({
  v,
  state: z.enum(["online", "offline", "lost"]),
  bdSeq,
  ts,
});
export type StatePayload = z.infer<typeof stateSchema>;

export const modelRefSchema = z.looseObject({
  id: z.string().min(1).max(200),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, "64 lower-case hex digits"),
  quant: z.string().min(1).max(32),
});
export type ModelRef = z.infer<typeof modelRefSchema>;

/**
 * An A/B variant's name (`itera fleet update --variant NAME`): recorded by the device with the release
 * it installed, announced in its birth and telemetry. A device without one is grouped by its version.
 */
export const variantSchema = idSchema;

export const birthSchema = z.looseObject({
  v,
  bdSeq,
  ts,
  agent: z.looseObject({ version: z.string(), node: z.string() }),
  hw: z.looseObject({
    platform: z.string(),
    arch: z.string(),
    cpus: z.number().int().nonnegative(),
    memory_mb: z.number().nonnegative(),
    cpu_model: z.string(),
  }),
  profile: z.string().min(1),
  models: z.array(modelRefSchema),
  /**
   * The latest time the agent found its state database (agent.db) corrupt at start-up, kept it
   * aside as `kept_as` and began a fresh one (its outbox, counters and job records were in the old
   * file). Absent when that never happened; older agents never send it.
   */
  store_reset: z.looseObject({ ts, reason: z.string().max(2000), kept_as: z.string().max(2000) }).optional(),
  /** The A/B variant of the running release (absent: installed without one; older agents never send it). */
  variant: variantSchema.optional(),
  /**
   * The version of the installed release the agent runs (its bundle manifest's `version`, e.g. the
   * model card's), which may differ from the agent software's own `agent.version`. Absent outside a
   * bundle and from older agents: then the release is `agent.version`.
   */
  release: z.string().min(1).max(200).optional(),
});
export type BirthPayload = z.infer<typeof birthSchema>;

/** The release a device runs, by its birth: what fleet updates, reports and the dashboard compare. */
export function releaseOf(birth: Pick<BirthPayload, "agent" | "release">): string {
  return birth.release ?? birth.agent.version;
}

/** The release of a device seen online (undefined: no birth yet). */
export function releaseOfDevice(
  birth: Pick<BirthPayload, "agent" | "release"> | undefined,
): string | undefined {
  return birth && releaseOf(birth);
}

/** Every method an agent of this version reports; a simulated meter's figures say `-simulated`. */
export const energyMethods = ["ina219", "pmic", "rapl", "tdp-estimate", "ina219-simulated"] as const;

export const telemetrySchema = z.looseObject({
  v,
  ts,
  bdSeq,
  seq: z.number().int().nonnegative(),
  m: z.looseObject({
    cpu_pct: num.min(0).max(100),
    temp_c: num.nullable(),
    rss_mb: num.nonnegative(),
    tok_s: num.nonnegative().nullable(),
    mj_per_token: num.nonnegative().nullable(),
    method: z.string().nullable(),
    throttled: z.boolean().nullable(),
  }),
  /** As the birth's: the A/B variant of the running release, so telemetry is grouped by it. */
  variant: variantSchema.optional(),
});
export type TelemetryPayload = z.infer<typeof telemetrySchema>;

/** A benchmark test: `ppN` (prompt processing of N tokens) or `tgN` (generation of N tokens). */
export const testNameSchema = z.string().regex(/^(pp|tg) ?[1-9]\d{0,5}$/, "a test is ppN or tgN");

const threadListSchema = z.array(z.number().int().positive().max(1024)).min(1).max(16);

/** Parameters of a `benchmark` job (the coordinator's `--tests/--threads/...`). */
export const benchmarkParamsSchema = z.strictObject({
  model: z.string().min(1).max(200),
  tests: z.array(testNameSchema).min(1).max(16),
  /**
   * Absent: each device's own choice, its tuned.json (a `tune` job with `apply`, `itera-agent tune`)
   * else its profile's threads; every result says which in `threads_from`. Agents older than this
   * field REJECT a job without it.
   */
  threads: threadListSchema.optional(),
  repetitions: z.number().int().positive().max(100),
  warmup: z.number().int().nonnegative().max(10).default(1),
  /** Each repetition repeats its test at least this long (default: the device profile's). */
  min_duration_s: z.number().nonnegative().max(600).optional(),
});
export type BenchmarkParams = z.infer<typeof benchmarkParamsSchema>;

/** A benchmark job's threads as reports print them. */
export function threadsLabel(p: Pick<BenchmarkParams, "threads">): string {
  return p.threads?.join(", ") ?? "each device's (tuned, else profile)";
}

/**
 * Parameters of a `tune` job (`itera fleet tune`): what `itera-agent tune` measures, with its options'
 * defaults. The device measures the model it carries (threads × decode path; `precisions` may only
 * name its own). `apply`: write the result to the agent's tuned.json, which its run, bench, serve and
 * later benchmark jobs use; without it the job only reports.
 */
export const tuneParamsSchema = z.strictObject({
  /** The model id the device must have (absent: the one it runs). */
  model: z.string().min(1).max(200).optional(),
  objective: z.enum(objectives).default("energy"),
  threads: threadListSchema.optional(),
  precisions: z.array(z.string().min(1).max(16)).min(1).max(8).optional(),
  decode: z.array(z.enum(decodePaths)).min(1).max(2).optional(),
  test: testNameSchema.default("tg64"),
  rounds: z.number().int().positive().max(100).default(3),
  min_duration_s: z.number().nonnegative().max(600).default(1),
  tolerance: z.number().min(0).max(1).default(0.05),
  apply: z.boolean().default(false),
});
export type TuneParams = z.infer<typeof tuneParamsSchema>;

/** What a tune job reports (one element of `results`): the tuned.json document and whether it was applied. */
export const tuneResultSchema = z.looseObject({
  device: z.string(),
  tuned: tunedSchema,
  /** Written to the agent's tuned.json (the job's `apply`). */
  applied: z.boolean(),
  /** Where on the device (null: not written). */
  written: z.string().max(4000).nullable(),
});
export type TuneResult = z.infer<typeof tuneResultSchema>;

/** Raw bytes of one update chunk (its base64 text fits a chunk message well under MAX_PAYLOAD_BYTES). */
export const UPDATE_CHUNK_BYTES = 96 * 1024;
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "64 lower-case hex digits");

/**
 * Parameters of an `update` job (`itera fleet update`): a whole bundle whose payload (its files, in
 * the manifest's sorted order, concatenated) travels in chunks on `jobs/{jobId}/chunk`. The signed
 * manifest rides in the request; the device checks it, the payload's sha256 and every file against it.
 */
export const updateParamsSchema = z.strictObject({
  /** The bundle's manifest.json as it was signed (checked by the device with src/bundle/manifest.ts). */
  manifest: z.record(z.string(), z.unknown()),
  payload_sha256: sha256Hex,
  payload_bytes: z
    .number()
    .int()
    .positive()
    .max(4 * 2 ** 30),
  chunk_bytes: z.number().int().positive().max(UPDATE_CHUNK_BYTES),
  chunks: z
    .number()
    .int()
    .positive()
    .max(2 ** 20),
  /** How long the new release has to come back online before the device rolls back by itself. */
  health_timeout_s: z.number().positive().max(3600),
  /** The A/B variant this release is installed as (`--variant`); older agents REJECT the unknown field. */
  variant: variantSchema.optional(),
  /**
   * What the payload holds: `bundle` (absent: the same) every file of the manifest; `model-pack` every
   * file but the runtime executable (`parts.runtime.file` of a v2 manifest), which the device takes
   * from its current release when that runs the same runtime (`itera fleet update --model-pack`).
   * Older agents REJECT the unknown field rather than install a release without its executable.
   */
  payload: z.enum(["bundle", "model-pack"]).optional(),
});
export type UpdateParams = z.infer<typeof updateParamsSchema>;

/**
 * The files an update's payload holds, in payload order (sorted names): every file of the manifest,
 * but for a `model-pack` payload not the runtime executable, which the device already runs.
 */
export function updatePayloadFiles(m: Manifest, kind: UpdateParams["payload"]): string[] {
  const runtime = kind === "model-pack" ? m.parts?.runtime.file : undefined;
  return Object.keys(m.files)
    .filter((n) => n !== runtime)
    .sort();
}

/** A job's document: one member per job type, keyed on `type` (each type has an executor on the agent). */
export const jobDocSchema = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("benchmark"), params: benchmarkParamsSchema }),
  z.strictObject({ type: z.literal("update"), params: updateParamsSchema }),
  z.strictObject({ type: z.literal("tune"), params: tuneParamsSchema }),
]);
export type JobDoc = z.infer<typeof jobDocSchema>;
export type JobType = JobDoc["type"];

export const jobRequestSchema = z.looseObject({
  v,
  jobId: idSchema,
  execNo: z.number().int().positive(),
  deadline: ts,
  doc: jobDocSchema,
});
export type JobRequest = z.infer<typeof jobRequestSchema>;

/** Device -> coordinator (`jobs/{jobId}/need`): the chunks of an update it still lacks (ranges, ends inclusive). */
export const chunkNeedSchema = z.looseObject({
  v,
  jobId: idSchema,
  execNo: z.number().int().positive(),
  missing: z.array(z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()])).max(4096),
  ts,
});
export type ChunkNeed = z.infer<typeof chunkNeedSchema>;

/** Coordinator -> device (`jobs/{jobId}/chunk`): one chunk of an update's payload with its sha256. */
export const chunkSchema = z.looseObject({
  v,
  jobId: idSchema,
  index: z.number().int().nonnegative(),
  sha256: sha256Hex,
  data: z.string().max(Math.ceil(UPDATE_CHUNK_BYTES / 3) * 4 + 4),
});
export type ChunkPayload = z.infer<typeof chunkSchema>;

/** What an update job reports (one element of `results`). */
export const updateResultSchema = z.looseObject({
  device: z.string(),
  from: z.string().nullable(),
  to: z.string(),
  /** The version running when the job ended (the new one, or the previous after a rollback). */
  running: z.string(),
  rolled_back: z.boolean(),
  bytes: z.number().int().nonnegative(),
  chunks_refused: z.number().int().nonnegative(),
  reason: z.string().max(4000).nullable(),
  /** The variant of the release running at the end (absent: none). */
  variant: variantSchema.optional(),
  /** A model-pack update: the files taken from the device's current release, not sent (the runtime). */
  linked: z.array(z.string().max(1000)).max(64).optional(),
});
export type UpdateResult = z.infer<typeof updateResultSchema>;

export const jobStatuses = ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED"] as const;
export type JobStatus = (typeof jobStatuses)[number];
export const terminalStatuses: ReadonlySet<JobStatus> = new Set([
  "SUCCEEDED",
  "FAILED",
  "TIMED_OUT",
  "REJECTED",
]);

export const jobStatusSchema = z.looseObject({
  v,
  jobId: idSchema,
  execNo: z.number().int().nonnegative(),
  status: z.enum(jobStatuses),
  details: z.string().max(4000).nullable(),
  ts,
});
export type JobStatusPayload = z.infer<typeof jobStatusSchema>;

/**
 * One benchmark result on the wire (DESIGN.md §7): the §7 fields of the result `src/bench` produces
 * (src/bench/result.ts), read leniently, since a device may run another agent version: figures a
 * device cannot measure may be null, and fields beyond §7 are kept, not required.
 */
export const benchResultSchema = producedResultSchema
  .pick({
    model: true,
    quant: true,
    profile: true,
    device: true,
    threads: true,
    repetitions: true,
    temp_c_max: true,
    throttled: true,
    agent_version: true,
    runtime: true,
    timestamp: true,
  })
  .extend({
    test: testNameSchema,
    tokens_per_s: z.looseObject({ mean: num, stdev: num, samples: z.array(num) }),
    ttft_ms: num.nullable(),
    latency_ms: z.looseObject({ p50: num, p95: num }),
    energy: energyResultSchema
      .pick({
        method: true,
        J: true,
        mJ_per_token: true,
        tokens_per_J: true,
        samples: true,
        rate_hz: true,
        simulated: true,
      })
      .loose()
      .nullable(),
    cpu_pct: num.nullable(),
    rss_mb: num.nullable(),
    /**
     * A benchmark job's thread count: `job` (its params named it), `tuned` (the device's tuned.json,
     * which also chose the decode path), `profile` (the device profile's). Absent from older agents.
     */
    threads_from: z.enum(["job", "tuned", "profile"]).optional(),
  })
  .loose();
export type BenchResult = z.infer<typeof benchResultSchema>;

export const jobResultSchema = z.looseObject({
  v,
  jobId: idSchema,
  execNo: z.number().int().nonnegative(),
  status: z.enum(jobStatuses),
  /** Per job type (benchmarkResult, updateResultSchema): the coordinator checks them by the job's type. */
  results: z.array(z.record(z.string(), z.unknown())).max(256),
  error: z.string().max(4000).nullable(),
});
export type JobResultPayload = z.infer<typeof jobResultSchema>;

export const feedbackSchema = z.looseObject({
  v,
  ts,
  requestId: z.string().min(1).max(200),
  rating: z.number().int().min(-1).max(5),
  comment: z.string().max(4000),
});
export type FeedbackPayload = z.infer<typeof feedbackSchema>;

/** Largest payload a receiver parses; anything bigger is refused before JSON.parse. */
export const MAX_PAYLOAD_BYTES = 256 * 1024;

export type Decoded<T> = { ok: true; value: T } | { ok: false; error: string };

/** Parse and validate one MQTT payload; never throws (payloads come from the network). */
export function decode<T>(
  schema: z.ZodType<T>,
  payload: Uint8Array,
  maxBytes = MAX_PAYLOAD_BYTES,
): Decoded<T> {
  if (payload.byteLength > maxBytes) {
    return { ok: false, error: `payload too large: ${payload.byteLength} bytes (limit ${maxBytes})` };
  }
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload).toString("utf8"));
  } catch (e) {
    return { ok: false, error: `payload is not JSON: ${(e as Error).message}` };
  }
  const r = schema.safeParse(json);
  if (r.success) return { ok: true, value: r.data };
  const issues = r.error.issues
    .slice(0, 5)
    .map((i) => `${i.path.length > 0 ? i.path.join(".") : "(top level)"}: ${i.message}`);
  return { ok: false, error: `invalid payload: ${issues.join("; ")}` };
}

/** Best-effort execNo from an invalid request, so that the REJECTED answer can name it. */
export function salvageExecNo(payload: Uint8Array): number {
  try {
    const j = JSON.parse(Buffer.from(payload).toString("utf8")) as { execNo?: unknown };
    return typeof j.execNo === "number" && Number.isInteger(j.execNo) && j.execNo >= 0 ? j.execNo : 0;
  } catch {
    return 0;
  }
}
