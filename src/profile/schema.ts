import { z } from "zod";

/** A device profile (DESIGN.md §4): what a target is, and how to estimate its power when no meter is there. */
export const meterNames = ["ina219", "pmic", "rapl", "tdp"] as const;
export type MeterName = (typeof meterNames)[number];

export const quantizations = ["fp32", "int8", "int4", "auto"] as const;

const watts = z.number().nonnegative().max(2000);

export const deviceProfileSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "lower-case letters, digits and dashes"),
    description: z.string().min(1),
    platform: z.enum(["linux", "win32"]),
    arch: z.enum(["arm64", "x64"]),
    cores: z.number().int().positive().max(1024),
    /** Default intra-op threads; commands cap it at the host's cores (src/profile/threads.ts). */
    threads: z.number().int().positive().max(1024),
    /**
     * Where the non-power figures come from (the power figures' are in power.sources). Every shipped
     * profile says it (test/profiles.test.ts); a user's own profile need not.
     */
    sources: z
      .object({ threads: z.string().min(1).optional() })
      .strict()
      .optional(),
    memory_mb: z.number().int().positive(),
    quantization: z.enum(quantizations),
    power: z
      .object({
        tdp_w: watts,
        idle_w: watts,
        curve: z.enum(["linear", "cubic"]),
        meters: z.array(z.enum(meterNames)).min(1),
        sources: z.object({ tdp_w: z.string().min(1), idle_w: z.string().min(1) }).strict(),
      })
      .strict()
      .refine((p) => p.idle_w <= p.tdp_w, { message: "idle_w must not exceed tdp_w", path: ["idle_w"] }),
    bench: z
      .object({
        tests: z.array(z.string().regex(/^(pp|tg)\d+$/, "a test is ppN or tgN")).min(1),
        repetitions: z.number().int().positive().max(1000),
        warmup: z.number().int().nonnegative().max(100),
        min_duration_s: z.number().nonnegative().max(3600),
      })
      .strict(),
    /** How `itera profiles --detect` recognises this device. */
    detect: z
      .object({
        device_tree_model: z.string().optional(),
        min_cores: z.number().int().positive().optional(),
        max_cores: z.number().int().positive().optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .refine((p) => p.threads <= p.cores, { message: "threads must not exceed cores", path: ["threads"] });

export type DeviceProfile = z.infer<typeof deviceProfileSchema>;
