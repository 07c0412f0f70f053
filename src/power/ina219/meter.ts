import type { SerialPort } from "serialport";
import { IteraError } from "../../errors.js";
import {
  latestT,
  type Meter,
  type MeterHealth,
  nowMs,
  type PowerSample,
  type Readings,
  waitFor,
} from "../meter.js";
import { LineDecoder } from "./lines.js";

export interface Ina219Options {
  /** Serial device, e.g. /dev/ttyACM0 or /dev/ttyUSB0. */
  port: string;
  baud?: number;
  /** How long to wait for the first valid reading before deciding what is wrong. */
  firstSampleTimeoutMs?: number;
  /** Unit of unnamed timestamps in CSV/space lines (inferred from the clock when not given). */
  timeUnit?: "ms" | "us";
}

const MAX_LINE = 512;
const COMMON_BAUDS = "9600, 57600, 115200, 230400";

/**
 * Use serialport, or say clearly that it is missing: a single-executable bundle may replace the
 * native add-on with a stub that throws when used. Imported here, on first use: only the ina219
 * meter talks to a port, and its 130 KB of JavaScript cost every other command (`info`) its memory.
 */
export async function serialPort<T>(use: (api: typeof SerialPort) => T): Promise<T> {
  try {
    return use((await import("serialport")).SerialPort);
  } catch (e) {
    throw new IteraError("the ina219 meter cannot run here: serialport's native add-on is not available", {
      where: "serialport",
      fix: "use --meter pmic, rapl or tdp, or run the agent from an installation with node_modules (npm ci)",
      cause: e,
    });
  }
}

/** Share of bytes that are not printable ASCII (or CR/LF/TAB): high when the baud rate is wrong. */
function unprintableShare(bytes: Buffer): number {
  if (bytes.length === 0) return 0;
  let bad = 0;
  for (const b of bytes) if (!(b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127))) bad++;
  return bad / bytes.length;
}

/**
 * An INA219 read through a serial bridge (Arduino, Pico, or any sketch printing one of the formats of
 * lines.ts). Samples are timestamped with the device's clock when lines carry one, mapped to the host's.
 */
/** Silence after which a bridge that has sent data counts as lost (it sends many lines a second). */
const SILENCE_MS = 5000;

export class Ina219Meter implements Meter {
  readonly name = "ina219" as const;
  readonly method = "ina219" as const;
  readonly nominalRateHz = 0; // set by the bridge; the measured rate is reported per window
  readonly uncertainty =
    "INA219 shunt monitor: ±0.5% gain error (±1% over temperature) plus one LSB (10 µV shunt, 4 mV bus) per reading; measures only what flows through the shunt, at the bridge's sampling rate";
  private port: SerialPort | undefined;
  private decoder: LineDecoder;
  private samples: PowerSample[] = [];
  private partial = "";
  private firstBytes = Buffer.alloc(0);
  private bytesSeen = 0;
  private lost: { at_ms: number; reason: string } | undefined;
  private lastDataMs: number | undefined;
  private stopping = false;
  private readonly baud: number;

  constructor(private readonly opts: Ina219Options) {
    this.baud = opts.baud ?? 115200;
    this.decoder = new LineDecoder(opts.timeUnit ? { timeUnit: opts.timeUnit } : {});
  }

  /** The line format detected so far. */
  format(): string | undefined {
    return this.decoder.detected();
  }

  async start(): Promise<void> {
    const path = this.opts.port;
    const port = await serialPort(
      (api) => new api({ path, baudRate: this.baud, autoOpen: false, lock: true }),
    );
    await new Promise<void>((resolve, reject) => port.open((e) => (e ? reject(e) : resolve()))).catch(
      async (e: Error) => {
        throw await this.openError(e);
      },
    );
    this.port = port;
    // Drop what queued up before we opened: stale lines would get wrong timestamps.
    await new Promise<void>((r) => port.flush(() => r()));
    port.on("data", (chunk: Buffer) => this.onData(chunk));
    port.on("close", (e?: Error & { disconnected?: boolean }) => {
      if (!this.stopping)
        this.lost = { at_ms: nowMs(), reason: `serial port ${path} closed${e ? `: ${e.message}` : ""}` };
    });
    port.on("error", (e: Error) => {
      if (!this.stopping) this.lost = { at_ms: nowMs(), reason: `serial port ${path}: ${e.message}` };
    });
    const timeout = this.opts.firstSampleTimeoutMs ?? 5000;
    const ok = await waitFor(
      () => this.samples.length > 0,
      timeout,
      () => this.lost !== undefined,
    );
    if (!ok) {
      const err = this.noSamplesError(timeout);
      await this.stop();
      throw err;
    }
  }

  private async openError(e: Error): Promise<IteraError> {
    const path = this.opts.port;
    const msg = e.message;
    if (/ENOENT|No such file/i.test(msg)) {
      const ports = await serialPort((api) => api.list()).catch(() => []);
      return new IteraError(`serial port ${path} does not exist`, {
        where: path,
        fix:
          ports.length > 0
            ? `plug in the bridge or use one of: ${ports.map((p) => p.path).join(", ")}`
            : "plug in the INA219 bridge (it appears as /dev/ttyACM* or /dev/ttyUSB*) and pass --port",
      });
    }
    if (/lock|busy|EBUSY|temporarily unavailable/i.test(msg)) {
      return new IteraError(`serial port ${path} is busy (another program has it open)`, {
        where: path,
        fix: "close the other program (serial monitor, screen, minicom, another itera-agent) and retry",
      });
    }
    if (/EACCES|permission/i.test(msg)) {
      return new IteraError(`no permission to open serial port ${path}`, {
        where: path,
        fix: "add the user to the 'dialout' group (sudo usermod -aG dialout $USER, then log in again)",
      });
    }
    return new IteraError(`cannot open serial port ${path}: ${msg}`, { where: path });
  }

  private noSamplesError(timeoutMs: number): IteraError {
    const path = this.opts.port;
    if (this.lost) {
      return new IteraError(`INA219 bridge lost before the first reading: ${this.lost.reason}`, {
        where: path,
      });
    }
    if (this.bytesSeen === 0) {
      return new IteraError(`no data from ${path} within ${timeoutMs / 1000} s`, {
        where: path,
        fix: "check that the bridge firmware is flashed and running (tools/ina219-bridge) and the cable carries data",
      });
    }
    const share = unprintableShare(this.firstBytes);
    const newlines = this.firstBytes.includes(10);
    if (share > 0.1 || (!newlines && this.bytesSeen > MAX_LINE)) {
      return new IteraError(
        `garbled data on ${path} at ${this.baud} baud (${Math.round(share * 100)}% unprintable bytes${newlines ? "" : ", no line ends"}): the baud rate is probably wrong`,
        {
          where: `${path} @ ${this.baud} baud`,
          fix: `pass --baud with the rate of the sketch's Serial.begin(...) (common: ${COMMON_BAUDS})`,
        },
      );
    }
    return new IteraError(
      `${this.decoder.stats.bad_lines + this.decoder.stats.bad_checksums} lines from ${path} but none is an INA219 reading`,
      {
        where: path,
        fix: "the bridge must print one of the formats in docs/energy.md (raw $INA lines, CSV, JSON lines, or Adafruit's getcurrent example)",
      },
    );
  }

  private onData(chunk: Buffer): void {
    const recv = nowMs();
    this.lastDataMs = recv;
    this.bytesSeen += chunk.length;
    if (this.firstBytes.length < 4096)
      this.firstBytes = Buffer.concat([this.firstBytes, chunk]).subarray(0, 4096);
    const text = this.partial + chunk.toString("latin1");
    const lines = text.split("\n");
    this.partial = lines.pop() ?? "";
    if (this.partial.length > MAX_LINE) {
      this.decoder.stats.bad_lines++;
      this.partial = "";
    }
    for (const line of lines) {
      if (line.length > MAX_LINE) {
        this.decoder.stats.bad_lines++;
        continue;
      }
      for (const s of this.decoder.feed(line, recv)) this.samples.push(s);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const port = this.port;
    this.port = undefined;
    if (port?.isOpen) await new Promise<void>((r) => port.close(() => r()));
  }

  readings(): Readings {
    return { kind: "power", samples: this.samples };
  }

  health(): MeterHealth {
    // A bridge that stops sending is lost too, even while its port stays open (a USB adapter left
    // plugged in, a pty whose close has not been delivered yet).
    if (
      !this.lost &&
      !this.stopping &&
      this.lastDataMs !== undefined &&
      nowMs() - this.lastDataMs > SILENCE_MS
    ) {
      this.lost = {
        at_ms: this.lastDataMs + SILENCE_MS,
        reason: `no data from the bridge on ${this.opts.port} for ${SILENCE_MS / 1000} s (unplugged or reset)`,
      };
    }
    return { ...this.decoder.stats, ...(this.lost ? { lost: this.lost } : {}) };
  }

  sync(t_ms: number, timeoutMs = 3000): Promise<boolean> {
    return waitFor(
      () => latestT(this.readings()) >= t_ms,
      timeoutMs,
      () => this.lost !== undefined,
    );
  }
}
