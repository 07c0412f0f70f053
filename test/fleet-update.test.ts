/**
 * `itera fleet update` end to end (issue #19): a real Mosquitto, real agent processes each running
 * from its own installed layout under a temporary root (installed first by `itera flash --rootfs`'s
 * code), kept alive by a small supervisor loop like systemd's Restart=always with the update guard
 * as ExecStartPre. Test-only seam: a release's `itera-agent` is a launcher script that runs the
 * development agent (dist/cli/itera-agent.js on the house micro model) with that release's version
 * (ITERA_VERSION), so a restart into a new release really runs a new process reporting a new version.
 */
import { createHash } from "node:crypto";
import { readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mayPublish } from "../src/fleet/broker-auth.js";
import type { FleetUpdateOutcome } from "../src/fleet/update.js";
import { prepareUpdate } from "../src/fleet/update.js";
import { FleetStore } from "../src/fleet/store.js";
import { PROTOCOL_VERSION } from "../src/protocol/schemas.js";
import { jobTopic } from "../src/protocol/topics.js";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { brokenLauncher, InstalledFleet, launcher } from "./fleet-update-helpers.js";
import { until } from "./mqtt-helpers.js";

const FLEET = "ota";
const DEVICES = ["dev-a", "dev-b", "dev-c"];

let f: InstalledFleet;

beforeAll(async () => {
  f = await InstalledFleet.create(FLEET, DEVICES);
}, 180_000);

afterAll(async () => {
  await f?.close();
});

describe("itera fleet update over a real Mosquitto", () => {
  it("updates every device, canary first, and each comes back reporting the new version", async () => {
    const b = await f.bundle("1.1.0", launcher("1.1.0"), 200_000);
    const db = join(f.dir, "fleet.db");
    const r = await f.update(b, "--trusted-key", f.pub, "--canary", "1", "--out", join(f.dir, "report-good"));
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("updated");
    expect(out.canary).toEqual(["dev-a"]);
    expect(out.stats.chunks).toBeGreaterThan(1);
    for (const d of out.devices) {
      expect(d, JSON.stringify(d)).toMatchObject({
        status: "SUCCEEDED",
        from: "1.0.0",
        running: "1.1.0",
        rolledBack: false,
      });
      expect(f.version(d.device)).toBe("1.1.0");
      expect(await f.release(d.device)).toBe("releases/1.1.0");
      expect(await readlink(join(f.roots.get(d.device)!, "opt/itera/previous"))).toBe("releases/1.0.0");
    }
    expect(out.devices.find((d) => d.device === "dev-a")!.wave).toBe(0);
    expect(r.stderr).toMatch(/canary dev-a/);
    expect(await readFile(join(f.dir, "report-good", "report.md"), "utf8")).toMatch(
      /result: \*\*updated\*\*/,
    );
    const store = new FleetStore(db);
    try {
      expect(store.runs().find((x) => x.jobId === out.jobId)?.type).toBe("update");
      expect(store.updateResults({ jobId: out.jobId }).map((x) => x.result.running)).toEqual([
        "1.1.0",
        "1.1.0",
        "1.1.0",
      ]);
    } finally {
      store.close();
    }
  }, 300_000);

  it("rolls the canary back when the new release fails its health check, and touches no other device", async () => {
    const b = await f.bundle("1.2.0", brokenLauncher("1.2.0"));
    const r = await f.update(b, "--canary", "1");
    expect(r.code, r.stderr).toBe(4);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("canary-failed");
    expect(out.reason).toMatch(/dev-a: FAILED.*rolled back to 1\.1\.0/);
    const a = out.devices.find((d) => d.device === "dev-a")!;
    expect(a).toMatchObject({ status: "FAILED", rolledBack: true, running: "1.1.0" });
    expect(await f.release("dev-a")).toBe("releases/1.1.0");
    await until(() => f.version("dev-a") === "1.1.0", "dev-a back online on 1.1.0", 30_000);
    for (const d of ["dev-b", "dev-c"]) {
      expect(out.devices.find((x) => x.device === d)).toMatchObject({ status: "SKIPPED", chunksSent: 0 });
      expect(await f.release(d)).toBe("releases/1.1.0");
      expect(await stat(join(f.roots.get(d)!, "opt/itera/releases/1.2.0")).catch(() => null)).toBeNull();
      expect(await stat(join(f.roots.get(d)!, "opt/itera/.staging")).catch(() => null)).toBeNull();
      expect(f.messages.some((m) => m.topic.startsWith(`itera/v1/${FLEET}/${d}/jobs/${out.jobId}/`))).toBe(
        false,
      );
    }
  }, 300_000);

  it("stops after --max-failures: a device that fails after a healthy canary keeps the rest from being sent anything", async () => {
    const b = await f.bundle("1.4.0", launcher("1.4.0"));
    // dev-b cannot stage anything (a file where its staging folder goes: a broken disk, say).
    const blocker = join(f.roots.get("dev-b")!, "opt/itera/.staging");
    await writeFile(blocker, "not a folder\n");
    try {
      const r = await f.update(b, "--canary", "1", "--max-failures", "1");
      expect(r.code, r.stderr).toBe(4);
      const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
      expect(out.result).toBe("stopped");
      expect(out.reason).toMatch(/1 device\(s\) failed \(--max-failures 1\)/);
      expect(out.devices.map((d) => [d.device, d.status, d.running])).toEqual([
        ["dev-a", "SUCCEEDED", "1.4.0"],
        ["dev-b", "FAILED", "1.1.0"],
        ["dev-c", "SKIPPED", "1.1.0"],
      ]);
      expect(await f.release("dev-a")).toBe("releases/1.4.0");
      expect(await f.release("dev-b")).toBe("releases/1.1.0");
      expect(await f.release("dev-c")).toBe("releases/1.1.0");
      expect(f.messages.some((m) => m.topic.startsWith(`itera/v1/${FLEET}/dev-c/jobs/${out.jobId}/`))).toBe(
        false,
      );
    } finally {
      await rm(blocker, { force: true });
    }
  }, 300_000);

  it("refuses a tampered chunk, asks for it again, and installs nothing from a payload that does not match", async () => {
    const b = await f.bundle("1.3.0", launcher("1.3.0"), 150_000);
    const { params, payload } = await prepareUpdate(b, 60);
    const jobId = "update-tamper-1";
    const coord = await mqtt.connectAsync(f.broker.url, { protocolVersion: 5 });
    const needs: Array<Array<[number, number]>> = [];
    coord.on("message", (topic, raw) => {
      if (topic === jobTopic(FLEET, "dev-b", jobId, "need")) needs.push(JSON.parse(raw.toString()).missing);
    });
    await coord.subscribeAsync(jobTopic(FLEET, "dev-b", jobId, "+"), { qos: 1 });
    const chunk = (index: number, data: Buffer, sha = createHash("sha256").update(data).digest("hex")) =>
      coord.publishAsync(
        jobTopic(FLEET, "dev-b", jobId, "chunk"),
        JSON.stringify({ v: PROTOCOL_VERSION, jobId, index, sha256: sha, data: data.toString("base64") }),
        { qos: 1 },
      );
    try {
      await coord.publishAsync(
        jobTopic(FLEET, "dev-b", jobId, "request"),
        JSON.stringify({
          v: PROTOCOL_VERSION,
          jobId,
          execNo: 1,
          deadline: Date.now() + 120_000,
          doc: { type: "update", params },
        }),
        { qos: 1 },
      );
      await until(() => needs.length > 0, "dev-b asks for the chunks", 30_000);
      expect(needs[0]).toEqual([[0, params.chunks - 1]]);
      // Chunk 1 arrives, then the broker restarts: the device asks again only for what it lacks.
      expect(params.chunks).toBe(2);
      await chunk(1, payload.subarray(params.chunk_bytes));
      const before = needs.length;
      await f.broker.stop();
      await f.broker.start();
      await until(() => needs.length > before, "dev-b asks again after the reconnect", 30_000);
      expect(needs.slice(before)).toContainEqual([[0, 0]]);
      expect(needs.slice(before).flat()).not.toContainEqual([1, 1]);
      const good0 = payload.subarray(0, params.chunk_bytes);
      const bad0 = Buffer.from(good0);
      bad0[10] ^= 0xff;
      // Changed in transit: its sha256 no longer holds, so the device refuses it and asks again.
      const asked = needs.length;
      await chunk(0, bad0, createHash("sha256").update(good0).digest("hex"));
      await until(
        () => /refused a chunk of update update-tamper-1: chunk 0 has/.test(f.log("dev-b")),
        "refusal",
        30_000,
      );
      await until(
        () => needs.slice(asked).some((n) => n.length === 1 && n[0]![0] === 0 && n[0]![1] === 0),
        "asks for chunk 0 again",
        30_000,
      );
      // A forger who also recomputes the chunk's sha256: the whole payload's sha256 catches it.
      await chunk(0, bad0);
      const resultTopic = jobTopic(FLEET, "dev-b", jobId, "result");
      await until(() => f.messages.some((m) => m.topic === resultTopic), "dev-b's result", 30_000);
      const res = f.messages.find((m) => m.topic === resultTopic)!.json as { status: string; error: string };
      expect(res.status).toBe("FAILED");
      expect(res.error).toMatch(/assembled payload has sha256 .* nothing was installed/);
      expect(await f.release("dev-b")).toBe("releases/1.1.0");
      expect(
        await stat(join(f.roots.get("dev-b")!, "opt/itera/releases/1.3.0")).catch(() => null),
      ).toBeNull();
    } finally {
      coord.end(true);
    }
  }, 120_000);

  it("refuses a bundle for another architecture and one signed by another key, with the reason", async () => {
    const other = signingKeys();
    const foreign = await makeFixtureBundle(join(f.dir, "bundles", "arch"), {
      version: "2.0.0",
      signWith: f.keys.privatePem,
      arch: process.arch === "x64" ? "arm64" : "x64",
    });
    const stranger = await makeFixtureBundle(join(f.dir, "bundles", "stranger"), {
      version: "2.0.1",
      signWith: other.privatePem,
    });
    for (const [b, why] of [
      [foreign, /the bundle is for linux-(arm64|x64), this device is/],
      [stranger, /signed by a different key than the one this device trusts/],
    ] as const) {
      const { params } = await prepareUpdate(b, 60);
      const jobId = `update-refuse-${params.payload_sha256.slice(0, 8)}`;
      const topic = jobTopic(FLEET, "dev-c", jobId, "result");
      f.observerClient.publish(
        jobTopic(FLEET, "dev-c", jobId, "request"),
        JSON.stringify({
          v: PROTOCOL_VERSION,
          jobId,
          execNo: 1,
          deadline: Date.now() + 60_000,
          doc: { type: "update", params },
        }),
        { qos: 1 },
      );
      await until(() => f.messages.some((m) => m.topic === topic), `dev-c answers ${jobId}`, 30_000);
      const res = f.messages.find((m) => m.topic === topic)!.json as { status: string; error: string };
      expect(res.status).toBe("REJECTED");
      expect(res.error).toMatch(why);
    }
    expect(await f.release("dev-c")).toBe("releases/1.1.0");
  }, 120_000);
});

describe("rights of the update topics on the embedded broker", () => {
  it("lets only the coordinator publish chunks, and a device ask only for its own", () => {
    const policy = { coordinators: new Set(["coordinator"]), readers: new Set<string>() };
    const chunk = jobTopic(FLEET, "dev-a", "update-1", "chunk");
    const need = jobTopic(FLEET, "dev-a", "update-1", "need");
    expect(mayPublish("coordinator", chunk, policy)).toBe(true);
    expect(mayPublish("dev-a", chunk, policy)).toBe(false);
    expect(mayPublish("dev-b", chunk, policy)).toBe(false);
    expect(mayPublish("dev-a", need, policy)).toBe(true);
    expect(mayPublish("dev-b", need, policy)).toBe(false);
  });
});
