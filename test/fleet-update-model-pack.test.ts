/**
 * `itera fleet update --model-pack` end to end (issue #19): only the model pack (and the release's
 * small files) travel; each device takes the runtime from its current release (a hard link), checks
 * the new release folder as `itera verify` does and restarts into it. Real Mosquitto, real agent
 * processes in installed layouts (test/fleet-update-helpers.ts). The releases are itera.bundle/v2
 * fixtures whose runtime is the same launcher script in every release (releaseLauncher: it reports
 * the version of the manifest beside it and runs the development agent on the release's own model/),
 * so a model pack that arrives is the model the new release really loads.
 */
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Manifest } from "../src/bundle/manifest.js";
import { sha256File } from "../src/util/fs.js";
import { type FleetUpdateOutcome, updatePayload } from "../src/fleet/update.js";
import { jobTopic } from "../src/protocol/topics.js";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { InstalledFleet, itera } from "./fleet-update-helpers.js";
import { until } from "./mqtt-helpers.js";

const FLEET = "ota-pack";
const DEVICES = ["pk-a", "pk-b", "pk-c"];
const MICRO = resolve("models/itera-lite-micro");
const DISTILLED = resolve("models/itera-lite-micro-distilled");

let f: InstalledFleet;

beforeAll(async () => {
  f = await InstalledFleet.create(FLEET, DEVICES, 30, (fleet) => fleet.partsBundle("1.0.0", MICRO));
}, 180_000);

afterAll(async () => {
  await f?.close();
});

async function manifestOf(bundle: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(bundle, "manifest.json"), "utf8")) as Manifest;
}

const inode = async (path: string) => (await stat(path)).ino;

/** Send one update job by hand (as a forger on the broker would) and wait for the device's result. */
async function forge(device: string, jobId: string, bundle: string, tamper?: (payload: Buffer) => void) {
  const { params, payload } = await updatePayload(bundle, await manifestOf(bundle), 60, "model-pack");
  if (tamper) {
    tamper(payload);
    params.payload_sha256 = createHash("sha256").update(payload).digest("hex");
  }
  const client = f.observerClient;
  const needTopic = jobTopic(FLEET, device, jobId, "need");
  const onNeed = (topic: string) => {
    if (topic !== needTopic) return;
    for (let i = 0; i < params.chunks; i++) {
      f.sendChunk(device, jobId, i, payload.subarray(i * params.chunk_bytes, (i + 1) * params.chunk_bytes));
    }
  };
  client.on("message", onNeed);
  try {
    f.requestUpdate(device, jobId, params, 90);
    const topic = jobTopic(FLEET, device, jobId, "result");
    await until(() => f.messages.some((m) => m.topic === topic), `${device}'s result of ${jobId}`, 90_000);
    return f.messages.find((m) => m.topic === topic)!.json as { status: string; error: string };
  } finally {
    client.off("message", onNeed);
  }
}

describe("itera fleet update --model-pack over a real Mosquitto", () => {
  it("sends only the model pack; every device links its runtime, restarts into the new model and reports the new version", async () => {
    const b = await f.partsBundle("1.1.0", DISTILLED);
    const m = await manifestOf(b);
    const r = await f.updateWith("--model-pack", b, "--trusted-key", f.pub, "--canary", "1");
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("updated");
    expect(out.payload).toBe("model-pack");
    expect(out.runtimeId).toBe(m.parts!.runtime.id);
    // What was sent: the model pack (model/ + model-pack.json) and the release's small files, no runtime.
    const packBytes = Object.entries(m.files)
      .filter(([n]) => n === "model-pack.json" || n.startsWith("model/"))
      .reduce((a, [, x]) => a + x.bytes, 0);
    expect(packBytes).toBe(m.parts!.model_pack.bytes);
    const releaseFiles = ["README.txt", "install.sh", "itera-agent.service"];
    const releaseBytes = releaseFiles.reduce((a, n) => a + m.files[n]!.bytes, 0);
    expect(out.stats.payloadBytes).toBe(packBytes + releaseBytes);
    expect(releaseBytes).toBeLessThan(2048);
    const runtimeBytes = m.files["itera-agent"]!.bytes;
    expect(out.stats.payloadBytes + runtimeBytes).toBe(
      Object.values(m.files).reduce((a, x) => a + x.bytes, 0),
    );
    const distilledSha = await sha256File(join(DISTILLED, "model.onnx"));
    for (const d of out.devices) {
      // Each device reports receiving exactly the pack and the release files, nothing of the runtime.
      expect([d.status, d.from, d.running, d.rolledBack, d.bytes], JSON.stringify(d)).toEqual([
        "SUCCEEDED",
        "1.0.0",
        "1.1.0",
        false,
        packBytes + releaseBytes,
      ]);
      expect(f.version(d.device)).toBe("1.1.0");
      // The new release loaded the model that came in the pack.
      expect(f.births.get(d.device)?.models[0]?.sha256).toBe(distilledSha);
      expect(await f.release(d.device)).toBe("releases/1.1.0");
      const rel = (v: string) => join(f.roots.get(d.device)!, "opt/itera/releases", v);
      // The runtime is the 1.0.0 release's file itself (hard link), not a copy sent over MQTT.
      expect(await inode(join(rel("1.1.0"), "itera-agent"))).toBe(
        await inode(join(rel("1.0.0"), "itera-agent")),
      );
      expect(await readFile(join(rel("1.1.0"), "model/model.onnx"))).toEqual(
        await readFile(join(DISTILLED, "model.onnx")),
      );
    }
    const result = f.messages.find((x) => x.topic === jobTopic(FLEET, "pk-a", out.jobId, "result"))?.json as {
      results: Array<{ linked?: string[] }>;
    };
    expect(result.results[0]?.linked).toEqual(["itera-agent"]);
  }, 300_000);

  it("is refused by a device whose runtime differs, with the runtime it needs and the one it runs", async () => {
    const b = await f.partsBundle("1.2.0", MICRO, { flavour: "b" });
    const want = (await manifestOf(b)).parts!.runtime.id;
    const running = (await manifestOf(join(f.roots.get("pk-a")!, "opt/itera/current"))).parts!.runtime.id;
    expect(want).not.toBe(running);
    const r = await f.updateWith("--model-pack", b, "--canary", "1");
    expect(r.code, r.stderr).toBe(4);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("canary-failed");
    const a = out.devices.find((d) => d.device === "pk-a")!;
    expect(a.status).toBe("REJECTED");
    expect(a.details).toContain(`runtime ${want} needed, this device runs ${running}`);
    expect(a.details).toContain("--bundle");
    for (const d of DEVICES) {
      expect(await f.release(d)).toBe("releases/1.1.0");
      expect(await stat(join(f.roots.get(d)!, "opt/itera/releases/1.2.0")).catch(() => null)).toBeNull();
    }
  }, 120_000);

  it("refuses a model pack whose model file was changed, and installs nothing", async () => {
    const b = await f.partsBundle("1.3.0", MICRO);
    const m = await manifestOf(b);
    // The forger changes a byte of model/model.onnx and gives the job the payload's new sha256.
    const names = Object.keys(m.files)
      .filter((n) => n !== "itera-agent")
      .sort();
    const offset = names
      .slice(0, names.indexOf("model/model.onnx"))
      .reduce((a, n) => a + m.files[n]!.bytes, 0);
    const res = await forge("pk-b", "update-pack-tamper", b, (payload) => {
      payload[offset + 100] ^= 0xff;
    });
    expect(res.status).toBe("FAILED");
    expect(res.error).toMatch(
      /received model pack does not verify: model\/model\.onnx has sha256 .*nothing was installed/,
    );
    expect(await f.release("pk-b")).toBe("releases/1.1.0");
    expect(await stat(join(f.roots.get("pk-b")!, "opt/itera/releases/1.3.0")).catch(() => null)).toBeNull();
  }, 120_000);

  it("refuses a model pack signed by another key than the bundle, and installs nothing", async () => {
    const other = signingKeys();
    const b = await f.partsBundle("1.4.0", MICRO, { packSignWith: other.privatePem });
    const res = await forge("pk-c", "update-pack-stranger", b);
    expect(res.status).toBe("FAILED");
    expect(res.error).toMatch(/does not verify: .*model-pack\.json is signed by another key than the bundle/);
    expect(await f.release("pk-c")).toBe("releases/1.1.0");
    expect(await stat(join(f.roots.get("pk-c")!, "opt/itera/releases/1.4.0")).catch(() => null)).toBeNull();
    await until(() => f.version("pk-c") === "1.1.0", "pk-c still online on 1.1.0", 10_000);
  }, 120_000);
});

describe("itera fleet update --model-pack: what it refuses before connecting", () => {
  const base = [
    "fleet",
    "update",
    "--broker",
    "mqtt://127.0.0.1:9",
    "--fleet",
    "x",
    "--db",
    "/nonexistent/x.db",
  ];

  it("needs exactly one of --bundle and --model-pack", async () => {
    for (const extra of [[], ["--bundle", "a", "--model-pack", "b"]]) {
      const r = await itera([...base, ...extra]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/no bundle to send|--bundle and --model-pack both given/);
      expect(r.stderr).toContain("--model-pack DIR");
    }
  });

  it("refuses an itera.bundle/v1 bundle (its model is inside the executable) and says to send it whole", async () => {
    const v1 = await makeFixtureBundle(join(f.dir, "bundles", "v1"), {
      version: "9.0.0",
      signWith: f.keys.privatePem,
    });
    const r = await itera([...base.slice(0, -2), "--db", join(f.dir, "v1.db"), "--model-pack", v1]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--model-pack needs an itera\.bundle\/v2 bundle/);
    expect(r.stderr).toMatch(/itera\.bundle\/v1/);
    expect(r.stderr).toContain("--bundle");
  });
});
