import { IteraError } from "../errors.js";
import { type MeterName, meterNames } from "../profile/schema.js";
import type { DeviceProfile } from "../profile/schema.js";
import { Ina219Meter, serialPort } from "./ina219/meter.js";
import { type Meter, simulatedMeter } from "./meter.js";
import { PmicMeter } from "./pmic.js";
import { RaplMeter } from "./rapl.js";
import { TdpMeter, tdpOptionsFromProfile } from "./tdp.js";

/** Everything needed to open any meter; each meter uses only its own fields. */
export interface MeterOptions {
  meter: MeterName | "auto";
  profile?: DeviceProfile;
  /** ina219: serial port and baud rate. */
  port?: string;
  baud?: number;
  /** ina219: the bridge on `port` is a simulator (tools/ina219-sim): its figures are labelled simulated. */
  simulated?: boolean;
  /** rapl: root of the powercap tree (a fake one in tests). */
  raplRoot?: string;
  /** pmic: linear correction and the vcgencmd executable. */
  pmicScale?: number;
  pmicOffsetW?: number;
  vcgencmd?: string;
  /** tdp: root of the proc filesystem; whose CPU utilisation (default the whole system). */
  procRoot?: string;
  tdpScope?: "system" | "process";
  /** Where `auto` reports why it skipped a meter (stderr in the CLI). */
  log?: (message: string) => void;
}

export const meterChoices = [...meterNames, "auto"] as const;

/** The bridge's port when none is given: the one USB serial device (ttyACM*, ttyUSB*) plugged in. */
async function findBridgePort(): Promise<string> {
  const listed = await serialPort((api) => api.list()).catch(() => []);
  const ports = listed.map((p) => p.path).filter((p) => /tty(ACM|USB)\d+$/.test(p));
  if (ports.length === 1) return ports[0]!;
  throw new IteraError(
    ports.length === 0
      ? "the ina219 meter needs a serial port, and no USB serial device is plugged in"
      : `the ina219 meter needs a serial port: several USB serial devices are plugged in (${ports.join(", ")})`,
    { fix: "plug in the INA219 bridge and/or pass --port /dev/ttyACM0 (see `ls /dev/tty{ACM,USB}*`)" },
  );
}

async function create(name: MeterName, o: MeterOptions): Promise<Meter> {
  switch (name) {
    case "ina219": {
      const meter = new Ina219Meter({
        port: o.port ?? (await findBridgePort()),
        ...(o.baud ? { baud: o.baud } : {}),
      });
      return o.simulated ? simulatedMeter(meter) : meter;
    }
    case "pmic":
      return new PmicMeter({
        ...(o.pmicScale !== undefined ? { scale: o.pmicScale } : {}),
        ...(o.pmicOffsetW !== undefined ? { offset_w: o.pmicOffsetW } : {}),
        ...(o.vcgencmd ? { vcgencmd: o.vcgencmd } : {}),
      });
    case "rapl":
      return new RaplMeter(o.raplRoot ? { root: o.raplRoot } : {});
    case "tdp":
      if (!o.profile) {
        throw new IteraError("the tdp estimate needs a device profile with power figures", {
          fix: "pass --profile NAME (see `itera profiles`)",
        });
      }
      return new TdpMeter({
        ...tdpOptionsFromProfile(o.profile),
        ...(o.procRoot ? { procRoot: o.procRoot } : {}),
        ...(o.tdpScope ? { scope: o.tdpScope } : {}),
      });
  }
}

/**
 * Open and start a meter. `auto` tries the profile's meters in order of preference (default
 * rapl, then tdp) and falls back past each one that cannot start, logging why.
 */
export async function openMeter(o: MeterOptions): Promise<{ meter: Meter; skipped: string[] }> {
  if (o.simulated && o.meter !== "ina219" && o.meter !== "auto") {
    throw new IteraError(`--simulated-meter labels a simulated INA219 bridge, not the ${o.meter} meter`, {
      where: "--simulated-meter",
      fix: "use it with --meter ina219 --port <the simulator's pty>, or leave it out",
    });
  }
  const order: MeterName[] = o.meter === "auto" ? (o.profile?.power.meters ?? ["rapl", "tdp"]) : [o.meter];
  const skipped: string[] = [];
  for (const name of order) {
    try {
      const meter = await create(name, o);
      await meter.start();
      return { meter, skipped };
    } catch (e) {
      if (!(e instanceof IteraError) || o.meter !== "auto") throw e;
      const reason = `${name}: ${e.message}`;
      skipped.push(reason);
      o.log?.(`meter ${reason}; trying the next one`);
    }
  }
  throw new IteraError(`no power meter could be started (tried ${order.join(", ")})`, {
    where: o.profile ? `profile ${o.profile.name} power.meters` : "--meter auto",
    fix: `${skipped.join("; ")}. Add "tdp" to the profile's meters or pass --meter`,
  });
}

export interface MeterProbe {
  meter: MeterName;
  available: boolean;
  method: string | null;
  /** Why it is not available, or what it measures. */
  detail: string;
}

/** Try to start every meter here (in the profile's order first), and say which work and why not. */
export async function probeMeters(o: Omit<MeterOptions, "meter">): Promise<MeterProbe[]> {
  const preferred = o.profile?.power.meters ?? [];
  const order = [...preferred, ...meterNames.filter((m) => !preferred.includes(m))];
  const out: MeterProbe[] = [];
  for (const name of order) {
    try {
      const meter = await create(name, { ...o, meter: name });
      await meter.start();
      await meter.stop();
      out.push({ meter: name, available: true, method: meter.method, detail: meter.uncertainty });
    } catch (e) {
      if (!(e instanceof IteraError)) throw e;
      out.push({
        meter: name,
        available: false,
        method: null,
        detail: e.fix ? `${e.message} (${e.fix})` : e.message,
      });
    }
  }
  return out;
}
