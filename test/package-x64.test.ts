import { spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, readdir, readFile, readlink, rm, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Command } from "commander";
import { connectAsync } from "mqtt";
import { beforeAll, describe, expect, it } from "vitest";
import { manifestSchema } from "../src/bundle/manifest.js";
import { registerKeygen } from "../src/cli/commands/keygen.js";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { verifyBundle, verifyBundleArchive } from "../src/package/verify.js";
import { freePort, Mosquitto, until, waitForPort } from "./mqtt-helpers.js";
import { deviceEnv, fixtureModel, run } from "./package-helpers.js";
import { startSim } from "./power-sim-helper.js";
import { tempDir } from "./temp-dir.js";

/**
 * The laptop-x64-4c bundle, built once: it runs natively on a machine without Node, generates what
 * PyTorch generates, and refuses to run or verify once a byte of it changes.
 */
let built: BuildResult;
let exe: string;
let pubKey: string;
let work: string;
const model = fixtureModel();

interface RunJson {
  ids: number[];
  cold_start: boolean;
  mode: string;
  timings: { first_token_ms: number };
}

beforeAll(async () => {
  work = await tempDir("itera-pkg-x64-");
  const program = new Command().exitOverride();
  registerKeygen(program);
  await program.parseAsync(["keygen", "--out", join(work, "keys"), "--json"], { from: "user" });
  pubKey = join(work, "keys", "itera-signing.pub");
  built = await buildBundle({
    model: model.dir,
    profile: "laptop-x64-4c",
    quant: "fp32",
    // A release version other than the agent software's, so the birth's `release` is told apart.
    version: "7.7.7-test",
    sign: join(work, "keys", "itera-signing.key"),
    out: join(work, "out"),
    quiet: true,
  });
  exe = join(built.dir, "itera-agent");
});

describe("laptop-x64-4c bundle", () => {
  it("writes the folder, the manifest of every file and the .tar.gz beside it", async () => {
    expect((await readdir(built.dir)).sort()).toEqual([
      "README.txt",
      "install.sh",
      "itera-agent",
      "itera-agent.service",
      "manifest.json",
      "model",
      "model-pack.json",
    ]);
    const manifest = manifestSchema.parse(
      JSON.parse(await readFile(join(built.dir, "manifest.json"), "utf8")),
    );
    // The runtime (the executable) and the model pack (model/ + model-pack.json) are separate parts.
    expect(Object.keys(manifest.files).sort()).toEqual([
      "README.txt",
      "install.sh",
      "itera-agent",
      "itera-agent.service",
      "model-pack.json",
      "model/genai_config.json",
      "model/model.onnx",
      "model/reference.json",
      "model/tokenizer.json",
    ]);
    expect(manifest.target).toEqual({ platform: "linux", arch: "x64", node: "24.21.0" });
    expect(Object.keys(manifest.assets)).toEqual(
      expect.arrayContaining([
        "profile.json",
        "native/onnxruntime_binding.node",
        "native/libonnxruntime.so.1",
        "bundle.json",
      ]),
    );
    // The shared library is stored compressed (it pays), with both hashes recorded.
    expect(manifest.assets["native/libonnxruntime.so.1"]?.encoding).toBe("br");
    expect(manifest.assets["native/libonnxruntime.so.1"]!.stored_bytes!).toBeLessThan(
      manifest.assets["native/libonnxruntime.so.1"]!.bytes / 2,
    );
    expect(built.sizes.node_stripped).toBeLessThan(built.sizes.node_raw);
    expect(built.self_check).toMatch(/^started/);
    const { stdout } = await run("tar", ["-tzf", built.tarball]);
    expect(stdout.split("\n")).toEqual(
      expect.arrayContaining([`${manifest.bundle_id}/itera-agent`, `${manifest.bundle_id}/manifest.json`]),
    );
    const unit = await readFile(join(built.dir, "itera-agent.service"), "utf8");
    expect(unit).toMatch(
      /^ExecStart=\/opt\/itera\/current\/itera-agent agent --config \/etc\/itera\/agent\.json$/m,
    );
  });

  it("runs with no node on PATH and `info --json` returns the embedded manifest", async () => {
    const { env } = await deviceEnv();
    await expect(run("sh", ["-c", "command -v node"], { env })).rejects.toThrow();
    const { stdout } = await run(exe, ["info", "--json"], { env });
    const info = JSON.parse(stdout);
    const manifest = JSON.parse(await readFile(join(built.dir, "manifest.json"), "utf8"));
    expect(info.agent).toMatchObject({ mode: "bundle", node: "v24.21.0" });
    // 8 GB: V8's own old space; every bundle caps the semi-spaces (src/package/sea.ts, v8HeapFlags).
    expect(info.agent.exec_argv).toEqual(["--max-semi-space-size=1"]);
    expect(info.manifest.bundle_id).toBe(manifest.bundle_id);
    // The release's manifest.json beside the executable, checked against the runtime at start.
    expect(info.manifest).toEqual(manifest);
    expect(manifest.assets["bundle.json"]).toBeDefined();
    expect(info.profile.name).toBe("laptop-x64-4c");
    expect(info.hardware.arch).toBe("x64");
    expect(info.meters.map((m: { meter: string }) => m.meter)).toEqual(
      expect.arrayContaining(["rapl", "tdp", "ina219"]),
    );
  });

  it("generates PyTorch's greedy tokens; the first run extracts, the second reuses", async () => {
    const { env, cache } = await deviceEnv();
    const args = ["run", "--prompt", model.prompt, "--max-tokens", String(model.greedyIds.length), "--json"];
    const cold = JSON.parse((await run(exe, args, { env })).stdout) as RunJson;
    expect(cold.ids).toEqual(model.greedyIds);
    expect(cold.cold_start).toBe(true);
    const warm = JSON.parse((await run(exe, args, { env })).stdout) as RunJson;
    expect(warm.ids).toEqual(model.greedyIds);
    expect(warm.cold_start).toBe(false);
    // The extraction folder (32 hex), the record of which ones are in use, and the model pack's stamp.
    const [dir] = (await readdir(cache)).filter((n) => /^[0-9a-f]{32}$/.test(n));
    expect((await readdir(join(cache, dir!, "native"))).sort()).toEqual([
      "libonnxruntime.so.1",
      "onnxruntime_binding.node",
      "serialport.node",
    ]);
  });

  it("--version loads no command: nothing is extracted and no add-on is loaded", async () => {
    const { env, cache } = await deviceEnv();
    const { stdout } = await run(exe, ["--version"], { env });
    expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    // The serialport and onnxruntime shims extract the bundle when loaded: neither was.
    expect(await readdir(cache).catch(() => [])).toEqual([]);
    // Only the named command is registered, yet help still lists every one.
    const help = (await run(exe, ["--help"], { env })).stdout;
    for (const c of ["info", "run", "agent", "bench", "meters", "serve"])
      expect(help).toMatch(new RegExp(`\\n  ${c} `));
  });

  it("two first runs racing each other both work and leave one complete extraction", async () => {
    const { env, cache } = await deviceEnv();
    const [a, b] = await Promise.all([
      run(exe, ["info", "--json"], { env }),
      run(exe, ["info", "--json"], { env }),
    ]);
    const da = JSON.parse(a.stdout).extraction.dir;
    expect(JSON.parse(b.stdout).extraction.dir).toBe(da);
    expect((await readdir(cache)).filter((n) => !n.startsWith(".") && !n.startsWith("model-"))).toEqual([
      da.split("/").pop(),
    ]);
  });

  it("reads an INA219 over a serial port from inside the bundle (embedded serialport add-on)", async () => {
    const { env } = await deviceEnv();
    const sim = await startSim(work, "bundle", ["--format", "raw"]);
    try {
      const { stdout } = await run(exe, ["meters", "--port", sim.port, "--json"], { env });
      const probes = JSON.parse(stdout) as { meter: string; available: boolean; method: string | null }[];
      expect(probes.find((p) => p.meter === "ina219")).toMatchObject({ available: true, method: "ina219" });
      expect(probes.find((p) => p.meter === "tdp")).toMatchObject({ available: true });
    } finally {
      await sim.stop();
    }
  });

  it("runs the fleet agent over a real Mosquitto, its state store on Node 24's built-in SQLite", async () => {
    const { env, home } = await deviceEnv();
    const broker = await Mosquitto.create(); // already started
    const seen = new Map<string, string>();
    const client = await connectAsync(broker.url);
    await client.subscribeAsync("itera/v1/pkg/dev1/#", { qos: 1 });
    client.on("message", (topic, payload) =>
      seen.set(topic.split("/").slice(4).join("/"), payload.toString()),
    );
    const state = join(home, "state");
    const agent = spawn(
      exe,
      [
        "agent",
        "--broker",
        broker.url,
        "--fleet",
        "pkg",
        "--device",
        "dev1",
        "--state-dir",
        state,
        "--telemetry-interval",
        "1",
      ],
      { env, stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    agent.stderr.on("data", (d) => {
      stderr += String(d);
    });
    try {
      await until(
        () => seen.has("birth") && seen.has("telemetry"),
        `birth and telemetry (agent stderr: ${stderr})`,
      );
      expect(JSON.parse(seen.get("state")!)).toMatchObject({ state: "online" });
      expect(JSON.parse(seen.get("birth")!).profile).toBe("laptop-x64-4c");
      // The release it runs, as fleet updates health-check it: the bundle's version, not the agent software's.
      const { version } = JSON.parse(await readFile(join(built.dir, "manifest.json"), "utf8"));
      expect(JSON.parse(seen.get("birth")!)).toMatchObject({ release: version });
      expect(await readdir(state)).toContain("agent.db");
    } finally {
      agent.kill("SIGTERM");
      await new Promise((r) => agent.once("exit", r));
      await client.endAsync();
      await broker.stop();
    }
  });

  it("benchmarks the model with an energy estimate from the single executable", async () => {
    const { env } = await deviceEnv();
    const args = [
      "bench",
      "--tests",
      "tg8",
      "-r",
      "1",
      "--warmup",
      "0",
      "--min-duration",
      "0",
      "--idle",
      "0",
    ];
    const { stdout } = await run(exe, [...args, "--meter", "tdp", "--json"], { env });
    const [result] = JSON.parse(stdout) as {
      profile: string;
      test: string;
      tokens: number;
      energy: { method: string };
    }[];
    expect(result).toMatchObject({ profile: "laptop-x64-4c", test: "tg 8", tokens: 8 });
    expect(result!.energy.method).toBe("tdp-estimate");
  });

  it("serves the model over HTTP from the single executable", async () => {
    const { env } = await deviceEnv();
    const port = await freePort();
    const server = spawn(exe, ["serve", "--port", String(port)], { env, stdio: "ignore" });
    try {
      await waitForPort(port, 60_000);
      // The server listens at once and answers 503 until the model is loaded.
      for (let i = 0; i < 600; i++) {
        const health = (await fetch(`http://127.0.0.1:${port}/healthz`)
          .then((r) => r.json())
          .catch(() => ({ model_loaded: false }))) as { model_loaded: boolean };
        if (health.model_loaded) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const res = await fetch(`http://127.0.0.1:${port}/v1/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: model.prompt, max_tokens: model.greedyIds.length, temperature: 0 }),
      });
      expect(res.status).toBe(200);
      const answer = (await res.json()) as { tokens: number[]; id: string };
      expect(answer.tokens).toEqual(model.greedyIds);
      // The HTTP plugins and the feedback store (agent.db on Node 24's SQLite) work in the bundle too.
      const feedback = await fetch(`http://127.0.0.1:${port}/v1/feedback`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ generation_id: answer.id, rating: 1 }),
      });
      expect(feedback.status).toBe(201);
      const metrics = await fetch(`http://127.0.0.1:${port}/metrics`, {
        headers: { "accept-encoding": "gzip" },
      });
      expect(metrics.headers.get("content-encoding")).toBe("gzip");
      expect(await metrics.text()).toContain("itera_generations_total");
    } finally {
      server.kill("SIGTERM");
      await new Promise((r) => server.once("exit", r));
    }
  });

  it("refuses --model/--profile inside a bundle", async () => {
    const { env } = await deviceEnv();
    const err = await run(exe, ["info", "--model", "/tmp"], { env }).catch(
      (e: { stderr: string; code: number }) => e,
    );
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr).toMatch(/--model and --profile are for development runs/);
  });

  it("verifies with the signer's key and refuses another key", async () => {
    const ok = await verifyBundle(built.dir, await readFile(pubKey, "utf8"));
    expect(ok).toMatchObject({ ok: true, signature: "valid", trusted_key: true });
    const archive = await verifyBundleArchive(built.tarball, await readFile(pubKey, "utf8"));
    expect(archive).toMatchObject({ ok: true, signature: "valid", trusted_key: true });
    const other = generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }).toString();
    const bad = await verifyBundle(built.dir, other);
    expect(bad).toMatchObject({ ok: false, signature: "untrusted-key", trusted_key: false });
  });

  it("an edited manifest breaks the signature", async () => {
    const copy = await copyBundle("edited", true);
    const m = JSON.parse(await readFile(join(copy, "manifest.json"), "utf8"));
    m.model.quant = "int4";
    await unlink(join(copy, "manifest.json"));
    await writeFile(join(copy, "manifest.json"), JSON.stringify(m));
    const r = await verifyBundle(copy);
    expect(r).toMatchObject({ ok: false, signature: "invalid" });
  });

  it("a flipped byte in an embedded asset: verify refuses, the agent refuses to start, install.sh refuses", async () => {
    const copy = await copyBundle("tampered", false);
    const manifest = manifestSchema.parse(JSON.parse(await readFile(join(copy, "manifest.json"), "utf8")));
    // The profile is stored as it is (too small to compress): find its bytes in the executable.
    expect(manifest.assets["profile.json"]?.encoding).toBe("identity");
    const bin = await readFile(join(copy, "itera-agent"));
    const at = bin.indexOf(Buffer.from('"name": "laptop-x64-4c"'));
    expect(at).toBeGreaterThan(0);
    bin[at + 10] = bin[at + 10]! ^ 0x01;
    await writeFile(join(copy, "itera-agent"), bin);

    const r = await verifyBundle(copy);
    expect(r.ok).toBe(false);
    expect(r.files).toContainEqual({ file: "itera-agent", status: "changed" });

    const { env } = await deviceEnv();
    const err = (await run(join(copy, "itera-agent"), ["info"], { env }).catch((e: unknown) => e)) as {
      code: number;
      stderr: string;
    };
    expect(err.code).toBe(3);
    expect(err.stderr).toMatch(/embedded asset 'profile\.json' does not match the bundle/);

    const root = await mkdtemp(join(work, "root-"));
    await expect(
      run("sh", [join(copy, "install.sh")], { env: { ...process.env, ROOT: root } }),
    ).rejects.toThrow(/do not match their checksums/);
    expect(await readdir(root)).toEqual([]);
  });

  it("a warm start hashes no model byte (the pack was checked on its first start); a changed model file is found", async () => {
    const copy = await copyBundle("tampered-warm", false);
    const { env, cache } = await deviceEnv();
    const args = ["run", "--prompt", model.prompt, "--max-tokens", String(model.greedyIds.length), "--json"];
    // The first start checks the model pack and leaves its stamp in the cache.
    expect((JSON.parse((await run(join(copy, "itera-agent"), args, { env })).stdout) as RunJson).ids).toEqual(
      model.greedyIds,
    );
    expect((await readdir(cache)).filter((n) => n.startsWith("model-"))).toHaveLength(1);
    expect((JSON.parse((await run(join(copy, "itera-agent"), args, { env })).stdout) as RunJson).ids).toEqual(
      model.greedyIds,
    );
    // A model file written afterwards (same size): its stat no longer matches the stamp, so it is hashed.
    const config = join(copy, "model", "genai_config.json");
    const text = await readFile(config, "utf8");
    await writeFile(config, text.replace('"', "'"));
    const err = (await run(join(copy, "itera-agent"), args, { env }).catch((e: unknown) => e)) as {
      code: number;
      stderr: string;
    };
    expect(err.code).toBe(3);
    expect(err.stderr).toMatch(/the installed model pack does not match the release/);
  });

  it("install.sh installs under ROOT in releases/<version> and points current at it", async () => {
    const root = await mkdtemp(join(work, "root-"));
    const manifest = manifestSchema.parse(
      JSON.parse(await readFile(join(built.dir, "manifest.json"), "utf8")),
    );
    await run("sh", [join(built.dir, "install.sh")], { env: { ...process.env, ROOT: root } });
    const base = join(root, "opt", "itera");
    expect(await readlink(join(base, "current"))).toBe(`releases/${manifest.version}`);
    expect((await stat(join(base, "current", "itera-agent"))).mode & 0o111).not.toBe(0);
    expect(await readdir(join(base, "releases"))).toEqual([manifest.version]);
    // The model pack is installed beside the executable, and the agent runs from there.
    expect((await readdir(join(base, "current", "model"))).sort()).toEqual([
      "genai_config.json",
      "model.onnx",
      "reference.json",
      "tokenizer.json",
    ]);
    const { env } = await deviceEnv();
    const info = JSON.parse(
      (await run(join(base, "current", "itera-agent"), ["info", "--json"], { env })).stdout,
    );
    expect(info.manifest.version).toBe(manifest.version);
    const unit = await readFile(join(root, "etc", "systemd", "system", "itera-agent.service"), "utf8");
    expect(unit).toContain("ExecStart=/opt/itera/current/itera-agent agent");
    // Installing again replaces the release and the link atomically, leaving no temp entries.
    await run("sh", [join(built.dir, "install.sh")], {
      env: { ...process.env, ROOT: root, PREFIX: "/srv/itera" },
    });
    expect(await readlink(join(root, "srv", "itera", "current"))).toBe(`releases/${manifest.version}`);
    expect(await readdir(join(root, "srv", "itera"))).toEqual(["current", "releases"]);
    expect(await readFile(join(root, "etc", "systemd", "system", "itera-agent.service"), "utf8")).toContain(
      "ExecStart=/srv/itera/current/itera-agent agent",
    );
  });
});

/** A copy of the bundle folder: hard links when only the manifest changes, a real copy otherwise. */
async function copyBundle(name: string, links: boolean): Promise<string> {
  const dest = join(work, name);
  await rm(dest, { recursive: true, force: true });
  await run("cp", [links ? "-al" : "-a", built.dir, dest]);
  return dest;
}
