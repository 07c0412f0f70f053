import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { IteraError } from "../errors.js";
import { writeFileAtomic } from "../util/fs.js";

/**
 * The devices this machine manages (host, profile, installed version, last seen), kept in
 * $XDG_CONFIG_HOME/itera/devices.json (~/.config/itera/devices.json by default). `itera flash`
 * updates it; `itera devices` edits it; the fleet commands read it with loadInventory().
 */
export const deviceEntrySchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "letters, digits, '.', '_' or '-' (at most 64)"),
    /** user@host for ssh; absent for a device only ever flashed through its SD card. */
    ssh: z.string().optional(),
    port: z.number().int().min(1).max(65535).optional(),
    identity: z.string().optional(),
    profile: z.string().optional(),
    fleet: z.string().optional(),
    installed_version: z.string().optional(),
    bundle_id: z.string().optional(),
    /** When a flash last reached the device (ISO 8601). */
    last_seen: z.string().optional(),
    last_flash: z
      .object({
        at: z.string(),
        version: z.string(),
        result: z.enum(["installed", "rolled-back", "written-to-rootfs"]),
      })
      .optional(),
  })
  .strict();

export type DeviceEntry = z.infer<typeof deviceEntrySchema>;

const inventorySchema = z
  .object({ schema: z.literal("itera.devices/v1"), devices: z.array(deviceEntrySchema) })
  .strict();

export function inventoryPath(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), ".config");
  return join(base, "itera", "devices.json");
}

export async function loadInventory(path = inventoryPath()): Promise<DeviceEntry[]> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new IteraError(`cannot read the device inventory: ${(e as Error).message}`, { where: path });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new IteraError("the device inventory is not valid JSON", {
      where: path,
      fix: "repair or delete the file (it is rebuilt by `itera devices add` and `itera flash`)",
    });
  }
  const r = inventorySchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new IteraError(`invalid device inventory: field '${issue.path.join(".")}': ${issue.message}`, {
      where: path,
      fix: "repair or delete the file (it is rebuilt by `itera devices add` and `itera flash`)",
    });
  }
  return r.data.devices;
}

async function saveInventory(devices: DeviceEntry[], path: string): Promise<void> {
  const sorted = [...devices].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  await writeFileAtomic(
    path,
    `${JSON.stringify({ schema: "itera.devices/v1", devices: sorted }, null, 2)}\n`,
  );
}

function validEntry(entry: DeviceEntry): DeviceEntry {
  const r = deviceEntrySchema.safeParse(entry);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new IteraError(`invalid device ${issue.path.join(".")}: ${issue.message}`, {
      fix: "correct the value",
    });
  }
  return r.data;
}

/** Add a device, or change the given fields of an existing one. */
export async function upsertDevice(
  name: string,
  fields: Partial<Omit<DeviceEntry, "name">>,
  path = inventoryPath(),
): Promise<DeviceEntry> {
  const devices = await loadInventory(path);
  const old = devices.find((d) => d.name === name);
  const defined = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
  const entry = validEntry({ ...(old ?? {}), ...defined, name } as DeviceEntry);
  await saveInventory([...devices.filter((d) => d.name !== name), entry], path);
  return entry;
}

export async function removeDevice(name: string, path = inventoryPath()): Promise<void> {
  const devices = await loadInventory(path);
  if (!devices.some((d) => d.name === name)) {
    throw new IteraError(`no device '${name}' in the inventory`, {
      where: path,
      fix: "see `itera devices list` for the names",
    });
  }
  await saveInventory(
    devices.filter((d) => d.name !== name),
    path,
  );
}

export async function findDevice(name: string, path = inventoryPath()): Promise<DeviceEntry> {
  const d = (await loadInventory(path)).find((x) => x.name === name);
  if (!d) {
    throw new IteraError(`no device '${name}' in the inventory`, {
      where: path,
      fix: "add it with `itera devices add NAME --ssh user@host`, or see `itera devices list`",
    });
  }
  return d;
}
