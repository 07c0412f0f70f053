import { type ChildProcess, spawn } from "node:child_process";
import { cp, writeFile } from "node:fs/promises";
import { createServer as createTcpServer, type Server as TcpServer } from "node:net";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { registerServe } from "../src/cli/agent-commands/serve.js";
import { buildBundle } from "../src/package/build.js";
import { loadModel } from "../src/runtime/index.js";
import { deviceEnv } from "./package-helpers.js";
import { parseSse, postJson } from "./serve-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * `itera-agent serve` as users run it: inside a real bundle (Node 24 single executable built by
 * `itera build`, no Node on PATH) with fastify, pino and prom-client bundled by esbuild; and its
 * refusals (bad options, a port in use, a model that cannot load) through commander in-process.
 */
const MODEL_DIR = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const PROMPT = "ROMEO:";
const API_KEY = "0123456789abcdef0123456789abcdef";
const auth = { authorization: `Bearer ${API_KEY}` };

/** Run `serve` in-process with its arguments; for the cases that end by themselves (errors). */
async function serveCli(...args: string[]): Promise<{ stderr: string; code: number }> {
  const program = new Command().exitOverride();
  registerServe(program);
  let stderr = "";
  const err = vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
    stderr += String(chunk);
    return true;
  });
  process.exitCode = 0;
  try {
    await program.parseAsync(["node", "itera-agent", "serve", "--log-level", "silent", ...args]);
  } finally {
    err.mockRestore();
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { stderr, code };
}

describe("refusals (development mode)", () => {
  let work: string;
  let busy: TcpServer;
  let busyPort: number;

  beforeAll(async () => {
    work = await tempDir("itera-serve-cli-");
    busy = createTcpServer();
    await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
    busyPort = (busy.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise((r) => busy.close(r));
  });

  const dev = ["--model", MODEL_DIR, "--profile", "laptop-x64-4c"];

  it.each([
    ["--port", "70000"],
    ["--port", "http"],
    ["--queue-timeout", "-1"],
    ["--max-queue", "1.5"],
    ["--max-tokens-limit", "0"],
    ["--threads", "0"],
    ["--log-level", "loud"],
  ])("refuses %s %s, naming the option", async (flag, value) => {
    const { stderr, code } = await serveCli(...dev, flag, value);
    expect(code).toBe(1);
    expect(stderr).toContain(`error: invalid ${flag}`);
    expect(stderr).toContain(`where: ${flag}`);
  });

  it("a port in use: one clear error and exit 1", async () => {
    const { stderr, code } = await serveCli(...dev, "--host", "127.0.0.1", "--port", String(busyPort));
    expect(code).toBe(1);
    expect(stderr).toContain(`error: port ${busyPort} is already in use`);
    expect(stderr).toContain("fix:");
  });

  it("a model that cannot load ends the command with the loader's error", async () => {
    const broken = join(work, "broken-model");
    await cp(MODEL_DIR, broken, { recursive: true });
    await writeFile(join(broken, "model.onnx"), "this is not an ONNX file");
    const { stderr, code } = await serveCli("--model", broken, "--profile", "laptop-x64-4c", "--port", "0");
    expect(code).toBe(1);
    expect(stderr).toContain("ONNX Runtime cannot load the graph");
    expect(stderr).toContain(join(broken, "model.onnx"));
  });

  it("an unreadable or short API key file is refused", async () => {
    const missing = await serveCli(...dev, "--api-key-file", join(work, "no-such-key"));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("cannot read the API key");
    await writeFile(join(work, "short.key"), "abc\n");
    const short = await serveCli(...dev, "--api-key-file", join(work, "short.key"));
    expect(short.code).toBe(1);
    expect(short.stderr).toContain("the API key is shorter than 16 characters");
  });

  it("outside a bundle, --model and --profile are required", async () => {
    const { stderr, code } = await serveCli("--port", "0");
    expect(code).toBe(1);
    expect(stderr).toContain("--model DIR and --profile NAME are required");
  });
});

describe("in a real bundle", () => {
  let work: string;
  let exe: string;
  let agent: ChildProcess | undefined;
  let stderr = "";
  let base: string;

  beforeAll(async () => {
    work = await tempDir("itera-serve-bundle-");
    const built = await buildBundle({
      model: MODEL_DIR,
      profile: "laptop-x64-4c",
      quant: "fp32",
      out: join(work, "out"),
      quiet: true,
    });
    exe = join(built.dir, "itera-agent");
    const device = await deviceEnv();
    // The key from the environment, as a systemd unit's Environment= or LoadCredential would give it.
    const env = { ...device.env, ITERA_API_KEY: API_KEY };
    agent = spawn(exe, ["serve", "--port", "0"], { env, stdio: ["ignore", "ignore", "pipe"] });
    agent.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    await vi.waitFor(
      () => {
        const m = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
        if (!m || !stderr.includes('"msg":"model loaded"')) throw new Error(`not ready: ${stderr}`);
        base = m[1]!;
      },
      { timeout: 120_000, interval: 50 },
    );
  });

  afterAll(async () => {
    if (agent && agent.exitCode === null) agent.kill("SIGKILL");
  });

  it("serves /healthz and /v1/info in bundle mode, with no Node on PATH", async () => {
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const info = (await (await fetch(`${base}/v1/info`, { headers: auth })).json()) as {
      agent: { mode: string; node: string };
      manifest: { bundle_id: string };
      profile: { name: string };
    };
    expect(info.agent.mode).toBe("bundle");
    expect(info.agent.node).toMatch(/^v24\./);
    expect(info.manifest.bundle_id).toMatch(/^itera-lite-micro-.*-laptop-x64-4c$/);
    expect(info.profile.name).toBe("laptop-x64-4c");
  });

  it("generates what the runtime generates here, as JSON and as a stream", async () => {
    const model = await loadModel(MODEL_DIR, { threads: 1 });
    const own = await model.generate(PROMPT, { maxTokens: 30, temperature: 0, ignoreEos: true });
    await model.dispose();
    const body = { prompt: PROMPT, max_tokens: 30, temperature: 0, ignore_eos: true };
    const json = (await (await postJson(`${base}/v1/generate`, body, { headers: auth })).json()) as {
      tokens: number[];
    };
    expect(json.tokens).toEqual(own.ids);
    const events = parseSse(
      await (await postJson(`${base}/v1/generate`, { ...body, stream: true }, { headers: auth })).text(),
    );
    const text = events
      .filter((e) => e.event === "token")
      .map((e) => (JSON.parse(e.data) as { text: string }).text)
      .join("");
    expect(text).toBe(own.text);
  });

  it("ITERA_API_KEY: everything but /healthz needs the key", async () => {
    const none = await fetch(`${base}/v1/info`);
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toBe("Bearer");
    const wrong = await fetch(`${base}/metrics`, { headers: { authorization: "Bearer nope" } });
    expect(wrong.status).toBe(401);
    expect(((await wrong.json()) as { error: { message: string; where: string } }).error).toMatchObject({
      message: "the API key is not valid",
      where: "header.authorization",
    });
    expect((await fetch(`${base}/metrics`, { headers: auth })).status).toBe(200);
  });

  it("logs JSON lines on stderr and stops cleanly on SIGTERM", async () => {
    const exited = new Promise<number | null>((r) => agent!.once("exit", (code) => r(code)));
    agent!.kill("SIGTERM");
    expect(await exited).toBe(0);
    const lines = stderr
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { msg: string; level: number });
    expect(lines.some((l) => l.msg === "request completed")).toBe(true);
    expect(lines.at(-1)!.msg).toBe("stopped");
  });
});
