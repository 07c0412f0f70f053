import * as z from "zod";

/** What this machine is (src/profile/detect.ts finds it; the agent keeps it per boot: src/agent-host/hardware-cache.ts). */
export const hardwareSchema = z.object({
  platform: z.string(),
  arch: z.string(),
  kernel: z.string(),
  cpu: z.object({
    brand: z.string(),
    manufacturer: z.string(),
    cores: z.number().int().positive(),
    physical_cores: z.number().int().positive(),
    speed_ghz: z.number().nonnegative(),
  }),
  memory_mb: z.number().int().nonnegative(),
  /** /proc/device-tree/model (e.g. "Raspberry Pi 4 Model B Rev 1.4"), when the machine has one. */
  device_tree_model: z.string().nullable(),
});

export type Hardware = z.infer<typeof hardwareSchema>;
