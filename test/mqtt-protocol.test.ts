import { describe, expect, it } from "vitest";
import { decode, jobRequestSchema, salvageExecNo, telemetrySchema } from "../src/protocol/schemas.js";
import { deviceTopic, fleetFilter, jobTopic, parseTopic, sharedFilter } from "../src/protocol/topics.js";
import { renderDevices } from "../src/fleet/watch.js";

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
