import { describe, expect, it } from "vitest";
import { decode, jobRequestSchema, salvageExecNo, telemetrySchema } from "../src/protocol/schemas.js";
import { deviceTopic, fleetFilter, jobTopic, parseTopic, sharedFilter } from "../src/protocol/topics.js";
import { renderDevices } from "../src/fleet/watch.js";
import { readPiThrottled, TelemetrySampler } from "../src/agent/telemetry.js";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDirSync } from "./temp-dir.js";

const enc = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v));

describe("topics", () => {
  it("builds and parses every topic of DESIGN §8", () => {
    expect(deviceTopic("lab", "pi-1", "state")).toBe("itera/v1/lab/pi-1/state");
    expect(jobTopic("lab", "pi-1", "j1", "result")).toBe("itera/v1/lab/pi-1/jobs/j1/result");
    expect(parseTopic("itera/v1/lab/pi-1/telemetry")).toEqual({
      fleet: "lab",
      device: "pi-1",
      kind: "telemetry",
    });
    expect(parseTopic("itera/v1/lab/pi-1/jobs/j1/status")).toEqual({
      fleet: "lab",
      device: "pi-1",
      kind: "status",
      jobId: "j1",
    });
    expect(fleetFilter("lab", "result")).toBe("itera/v1/lab/+/jobs/+/result");
    expect(sharedFilter("g", fleetFilter("lab", "result"))).toBe("$share/g/itera/v1/lab/+/jobs/+/result");
  });

  it("returns undefined for anything else instead of throwing", () => {
    for (const t of [
      "",
      "itera/v2/lab/pi/state",
      "itera/v1/lab/pi",
      "itera/v1/lab/pi/unknown",
      "itera/v1/lab/pi/jobs/j/other",
      "itera/v1/l+b/pi/state",
      "itera/v1/lab/pi/state/extra",
    ]) {
      expect(parseTopic(t)).toBeUndefined();
    }
  });
});

describe("payload decoding", () => {
  const req = {
    v: 1,
    jobId: "j",
    execNo: 1,
    deadline: 1,
    doc: { type: "benchmark", params: { model: "m", tests: ["pp64"], threads: [1], repetitions: 1 } },
  };

  it("accepts a valid request and fills defaults", () => {
    const d = decode(jobRequestSchema, enc(req));
    expect(d.ok && d.value.doc.params.warmup).toBe(1);
  });

  it("names the field of an invalid payload, refuses non-JSON and oversized payloads", () => {
    const bad = decode(jobRequestSchema, enc({ ...req, doc: { type: "shell", params: {} } }));
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.error).toMatch(/doc\.type/);
    expect(decode(jobRequestSchema, enc("{")).ok).toBe(false);
    const big = decode(jobRequestSchema, Buffer.alloc(2000, 32), 1000);
    expect(!big.ok && big.error).toMatch(/too large: 2000 bytes/);
    const t = decode(telemetrySchema, enc({ v: 1, ts: 1, bdSeq: 0, seq: 0, m: { cpu_pct: 120 } }));
    expect(!t.ok && t.error).toMatch(/m\.cpu_pct/);
  });

  it("salvages an execNo for the REJECTED answer when it can", () => {
    expect(salvageExecNo(enc({ execNo: 4 }))).toBe(4);
    expect(salvageExecNo(enc({ execNo: "4" }))).toBe(0);
    expect(salvageExecNo(enc("not json"))).toBe(0);
  });
});

describe("watch table", () => {
  it("renders one row per device, sorted, with the latest telemetry", () => {
    const now = Date.now();
    const text = renderDevices([
      {
        device: "b",
        state: "lost",
        bdSeq: 3,
        birth: undefined,
        telemetry: undefined,
        telemetryCount: 0,
        lastSeenMs: now,
      },
      {
        device: "a",
        state: "online",
        bdSeq: 1,
        birth: undefined,
        telemetry: {
          v: 1,
          ts: now,
          bdSeq: 1,
          seq: 7,
          m: {
            cpu_pct: 12.5,
            temp_c: null,
            rss_mb: 80,
            tok_s: 31.2,
            mj_per_token: 4.5,
            method: "ina219",
            throttled: false,
          },
        },
        telemetryCount: 8,
        lastSeenMs: now,
      },
    ]);
    const lines = text.split("\n");
    expect(lines[2]).toMatch(/^\| a +\| online +\| +1 \|.*12\.50 \|.*31\.20 \|.*4\.500 \| ina219 +\| +7 \|/);
    expect(lines[3]).toMatch(/^\| b +\| lost /);
  });
});

describe("telemetry sampling", () => {
  it("reads the Pi firmware throttling flags (bit 2 = throttled now)", () => {
    const dir = tempDirSync("itera-throttle-");
    const f = join(dir, "get_throttled");
    writeFileSync(f, "50005\n");
    expect(readPiThrottled(f)).toBe(true);
    writeFileSync(f, "50000\n");
    expect(readPiThrottled(f)).toBe(false);
    expect(readPiThrottled(join(dir, "missing"))).toBeNull();
  });

  it("samples valid metrics and remembers the last generation test's speed and energy", () => {
    const s = new TelemetrySampler();
    const first = s.sample();
    expect(first.tok_s).toBeNull();
    expect(first.rss_mb).toBeGreaterThan(0);
    expect(first.cpu_pct).toBeGreaterThanOrEqual(0);
    const base = {
      model: "m",
      quant: "fp32",
      profile: "p",
      device: "d",
      threads: 1,
      repetitions: 1,
      ttft_ms: 1,
      latency_ms: { p50: 1, p95: 2 },
      cpu_pct: 1,
      rss_mb: 1,
      temp_c_max: null,
      throttled: null,
      agent_version: "x",
      runtime: "r",
      timestamp: "t",
    };
    s.noteResults([
      { ...base, test: "pp64", tokens_per_s: { mean: 900, stdev: 0, samples: [900] }, energy: null },
      {
        ...base,
        test: "tg128",
        tokens_per_s: { mean: 42, stdev: 0, samples: [42] },
        energy: { method: "ina219", J: 1, mJ_per_token: 7.5, tokens_per_J: 133, samples: 10, rate_hz: 50 },
      },
    ]);
    expect(s.sample()).toMatchObject({ tok_s: 42, mj_per_token: 7.5, method: "ina219" });
  });
});
