/**
 * `itera quantize` options, validated once so that every later step can trust them.
 */
import { z } from "zod";
import { IteraError } from "../errors.js";
import { isValidBlockSize } from "./blockwise.js";

export const MODES = ["int8", "int4", "int8-wo", "fp16", "auto"] as const;
export type Mode = (typeof MODES)[number];

/** What one weight can become. Ordered from smallest to largest on disk. */
export const MOE_SCALES = ["row", "block"] as const;
export type MoeScales = (typeof MOE_SCALES)[number];

export const PRECISIONS = ["int4", "int8-wo", "int8", "fp16", "fp32"] as const;
export type Precision = (typeof PRECISIONS)[number];

/**
 * The command-line spelling of the options an error's fix may suggest: `itera quantize` and
 * `itera build` (which quantizes with its own option names) print fixes in their own words.
 */
export interface OptionNames {
  command: string;
  budget: string;
  /** the option that asks for mixed precision within the budget */
  mixed: string;
  /** the option that asks for int8 everywhere */
  int8: string;
  /** the option that asks for a fixed precision (in "or choose a fixed ...") */
  fixed: string;
  exclude: string;
  calib: string;
  eval: string;
  out: string;
}

export const QUANTIZE_OPTION_NAMES: OptionNames = {
  command: "itera quantize",
  budget: "--budget",
  mixed: "--mode auto",
  int8: "--mode int8",
  fixed: "--mode",
  exclude: "--exclude",
  calib: "--calib",
  eval: "--eval",
  out: "--out",
};

/** Auto mode's smallest precision: weights start there and move up (towards fp32) only as needed. */
export const AUTO_LOWEST = ["int4", "int8"] as const;
export type AutoLowest = (typeof AUTO_LOWEST)[number];

export interface QuantizeOptions {
  mode: Mode;
  /** auto mode: the smallest precision tried (int4: int4 -> int8-wo -> fp32; int8: int8 -> int8-wo -> fp32) */
  lowest: AutoLowest;
  /** how the fixes in errors name the options */
  names: OptionNames;
  blockSize: number;
  /** block-wise formats: symmetric (no zero points); default false */
  symmetric: boolean;
  /** int8 dynamic weights: zero point 0; default true (as onnxruntime's quantizer) */
  int8Symmetric: boolean;
  /** block-wise formats: pick each block's range by least squared error among shrunk ranges */
  searchClipping: boolean;
  accuracyLevel: number;
  /** QMoE experts: one scale per row (onnxruntime's fast 4-bit path) or block-wise with blockSize */
  moeScales: MoeScales;
  /** QMoE experts: asymmetric (zero points); default false, symmetric (onnxruntime's fast path) */
  moeZeroPoints: boolean;
  perChannel: boolean;
  reduceRange: boolean;
  exclude: string[];
  /** precision of the output head (the projection to logits); undefined: as the mode says */
  head: Precision | undefined;
  /** precision of embedding tables (Gather on a constant); undefined: as the mode says */
  embedding: Precision | undefined;
  /** allowed relative perplexity increase on the held-out text; null: no limit */
  budget: number | null;
  calibFile: string | undefined;
  evalFile: string | undefined;
  calibChars: number;
  evalChars: number;
}

/** "2%", "0.02", "none" -> 0.02, 0.02, null */
export function parseBudget(text: string, flag = "--budget"): number | null {
  const t = text.trim().toLowerCase();
  if (t === "none" || t === "off") return null;
  const pct = t.endsWith("%");
  const v = Number(pct ? t.slice(0, -1) : t);
  if (!Number.isFinite(v) || v < 0) {
    throw new IteraError(`invalid ${flag} "${text}"`, {
      where: flag,
      fix: 'give the allowed perplexity increase as a percentage ("2%"), a fraction ("0.02") or "none"',
    });
  }
  return pct ? v / 100 : v;
}

const precision = z.enum(PRECISIONS);

const raw = z.object({
  mode: z.enum(MODES, { error: () => `must be one of ${MODES.join(", ")}` }),
  lowest: z.enum(AUTO_LOWEST, { error: () => `must be one of ${AUTO_LOWEST.join(", ")}` }).default("int4"),
  blockSize: z.coerce
    .number({ error: () => "must be a power of two >= 16 (16, 32, 64, 128, ...)" })
    .refine(isValidBlockSize, { message: "must be a power of two >= 16 (16, 32, 64, 128, ...)" }),
  symmetric: z.boolean().optional(),
  clipSearch: z.boolean().default(true),
  accuracyLevel: z.coerce
    .number()
    .int()
    .min(0)
    .max(4, { message: "must be 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)" }),
  moeScales: z.enum(MOE_SCALES, { error: () => `must be one of ${MOE_SCALES.join(", ")}` }).default("row"),
  moeZeroPoints: z.boolean().default(false),
  perChannel: z.boolean().default(false),
  reduceRange: z.boolean().default(false),
  exclude: z.array(z.string()).default([]),
  head: precision.optional(),
  embedding: precision.optional(),
  budget: z.string().default("2%"),
  calib: z.string().optional(),
  eval: z.string().optional(),
  calibChars: z.coerce.number().int().positive().default(2000),
  evalChars: z.coerce.number().int().positive().default(4000),
});

/**
 * Validate command-line options; each problem becomes one IteraError naming the option as the
 * calling command spells it (`names`: `itera quantize`'s by default).
 */
export function parseQuantizeOptions(
  input: Record<string, unknown>,
  names: OptionNames = QUANTIZE_OPTION_NAMES,
): QuantizeOptions {
  const r = raw.safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = String(issue.path[0] ?? "");
    const named: Record<string, string> = { budget: names.budget, calib: names.calib, eval: names.eval };
    const flag = named[field] ?? `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    const given = input[field];
    throw new IteraError(
      `invalid ${flag}${given === undefined ? "" : ` "${String(given)}"`}: ${issue.message}`,
      {
        where: flag,
        fix: `see \`${names.command} --help\`; ${flag} ${issue.message}`,
      },
    );
  }
  const o = r.data;
  return {
    mode: o.mode,
    lowest: o.lowest,
    names,
    blockSize: o.blockSize,
    symmetric: o.symmetric ?? false,
    int8Symmetric: o.symmetric ?? true,
    searchClipping: o.clipSearch,
    accuracyLevel: o.accuracyLevel,
    moeScales: o.moeScales,
    moeZeroPoints: o.moeZeroPoints,
    perChannel: o.perChannel,
    reduceRange: o.reduceRange,
    exclude: o.exclude
      .flatMap((e) => e.split(","))
      .map((e) => e.trim())
      .filter((e) => e.length > 0),
    head: o.head,
    embedding: o.embedding,
    budget: parseBudget(o.budget, names.budget),
    calibFile: o.calib,
    evalFile: o.eval,
    calibChars: o.calibChars,
    evalChars: o.evalChars,
  };
}
