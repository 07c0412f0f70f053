import { execFile } from "node:child_process";
import { copyFile, mkdir, readdir, readFile, symlink } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "./temp-dir.js";

/**
 * The README's journey, as a new user walks it: from the repository with nothing beside it (no
 * ITERA_DATASETS, no ../shared), every shipped profile builds the house model with no options, the
 * bundles verify, a Pi bundle is flashed into an SD card's root file system, the arm64 bundle runs
 * under qemu-aarch64 and an x64 one natively, and `itera bench` runs with the default threads.
 * Commands run from an empty working folder, so the default `--out firmware-bundles` lands there.
 */
const exec = promisify(execFile);
const repo = resolve(import.meta.dirname, "..");
const itera = join(repo, "dist", "cli", "itera.js");
const qemu = join(repo, "tools", "qemu", "run-arm64.sh");
const model = join(repo, "models", "itera-lite-micro");
const golden = JSON.parse(await readFile(join(model, "golden.json"), "utf8")) as { prompt: string };
const profiles = (await readdir(join(repo, "device-profiles")))
  .filter((f) => f.endsWith(".json"))
  .map((f) => f.slice(0, -".json".length))
  .sort();

let cwd: string;
const env = { ...process.env };
delete env.ITERA_DATASETS;

async function cli(
  args: string[],
  timeout = 600_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await exec(process.execPath, [itera, ...args], { cwd, env, timeout, maxBuffer: 64 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return {
      code: typeof err.code === "number" ? err.code : 1,
      stdout: err.stdout ?? "",
      stderr: err.stderr ?? "",
    };
  }
}

/** The bundle folder `itera build` wrote for a profile into ./firmware-bundles. */
async function bundleFor(profile: string): Promise<string> {
  const names = (await readdir(join(cwd, "firmware-bundles"), { withFileTypes: true }))
    .filter(
      (d) => d.isDirectory() && d.name.startsWith("itera-lite-micro-") && d.name.endsWith(`-${profile}`),
    )
    .map((d) => d.name);
  expect(names, `one bundle folder for ${profile}`).toHaveLength(1);
  return join(cwd, "firmware-bundles", names[0]!);
}

beforeAll(async () => {
  cwd = await tempDir("itera-journey-");
});

describe("a new user's first hour, as the README tells it", () => {
  it("ships its datasets: nothing is read from beside the repository", async () => {
    for (const f of ["tinyshakespeare.txt", "wikitext-2/test.txt", "tinystories-sample.txt", "README.md"]) {
      await expect(readFile(join(repo, "data", f))).resolves.toBeInstanceOf(Buffer);
    }
    const r = await cli(["eval", model, "--tolerance", "0.001", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).evaluations.length).toBeGreaterThan(0);
  });

  it("itera profiles and itera run work with no options beyond the model", async () => {
    const listed = await cli(["profiles"]);
    expect(listed.code, listed.stderr).toBe(0);
    for (const p of profiles) expect(listed.stdout).toContain(p);
    const r = await cli(["run", model, "-p", golden.prompt, "-n", "8"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.length).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/\[8 tokens, stop: max_tokens, .*greedy/);
  });

  it("makes a signing key (itera keygen)", async () => {
    const r = await cli(["keygen"]);
    expect(r.code, r.stderr).toBe(0);
    await expect(readFile(join(cwd, "itera-signing.pub"))).resolves.toBeInstanceOf(Buffer);
  });

  // Every profile with no option at all; the Pi that gets flashed below is signed (flash refuses
  // an unsigned bundle), which changes nothing else in the build.
  it.each(profiles)(
    "itera build --model models/itera-lite-micro --profile %s",
    { timeout: 900_000 },
    async (profile) => {
      const sign = profile === "rpi4" ? ["--sign", "itera-signing.key"] : [];
      const r = await cli(["build", "--model", model, "--profile", profile, ...sign]);
      expect(r.stderr + r.stdout).not.toMatch(/internal error/);
      expect(r.code, r.stderr).toBe(0);
      const dir = await bundleFor(profile);
      const verified = await cli([
        "verify",
        dir,
        ...(sign.length ? ["--key", "itera-signing.pub"] : []),
        "--json",
      ]);
      expect(verified.code, verified.stderr).toBe(0);
      expect(JSON.parse(verified.stdout).ok).toBe(true);
    },
  );

  it("flashes the rpi4 bundle into an SD card's root file system", async () => {
    const card = join(cwd, "card");
    await mkdir(join(card, "usr/bin"), { recursive: true });
    await mkdir(join(card, "etc"), { recursive: true });
    await copyFile("/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1", join(card, "usr/bin/dash"));
    await symlink("usr/bin", join(card, "bin"));
    await symlink("dash", join(card, "usr/bin/sh"));
    const bundle = await bundleFor("rpi4");
    const r = await cli([
      "flash",
      bundle,
      "--rootfs",
      card,
      "--fleet",
      "home",
      "--broker",
      "mqtt://broker.local:1883",
      "--device-id",
      "pi-1",
      "--key",
      "itera-signing.pub",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const installed = join(card, "opt/itera/current/itera-agent");
    await expect(readFile(installed)).resolves.toBeInstanceOf(Buffer);
    expect(JSON.parse(await readFile(join(card, "etc/itera/agent.json"), "utf8")).device_id).toBe("pi-1");
  });

  it("runs the rpi4 bundle under qemu-aarch64", async () => {
    const bundle = await bundleFor("rpi4");
    const { stdout } = await exec(
      qemu,
      [join(bundle, "itera-agent"), "run", "--prompt", golden.prompt, "--max-tokens", "12", "--json"],
      {
        env: { ...env, ITERA_AGENT_CACHE: join(cwd, "agent-cache-arm64") },
        timeout: 600_000,
        maxBuffer: 16 << 20,
      },
    );
    const out = JSON.parse(stdout);
    expect(out.bundle).toMatch(/-rpi4$/);
    expect(out.ids).toHaveLength(12);
    expect(out.text.length).toBeGreaterThan(0);
    expect(out.threads).toBeLessThanOrEqual(2); // the runner's QEMU_CPUS
  });

  it("runs an x64 bundle natively", async () => {
    const bundle = await bundleFor("laptop-x64-4c");
    const { stdout, stderr } = await exec(
      join(bundle, "itera-agent"),
      ["run", "--prompt", golden.prompt, "--max-tokens", "12"],
      { env: { ...env, ITERA_AGENT_CACHE: join(cwd, "agent-cache-x64") }, timeout: 300_000 },
    );
    expect(stdout.length).toBeGreaterThan(0);
    // the same summary line as `itera run`: greedy by default, threads at most this host's cores
    const summary = stderr.match(/\[12 tokens, stop: max_tokens, .* decode\), greedy, (\d+) threads?\]/);
    expect(summary, stderr).not.toBeNull();
    expect(Number(summary![1])).toBeLessThanOrEqual(availableParallelism());
  });

  it("itera bench with the default threads never uses more threads than this host has cores", async () => {
    const r = await cli(["bench", model, "--tests", "tg16", "-r", "2", "--min-duration", "0", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as { threads: number }[];
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows) expect(row.threads).toBeLessThanOrEqual(availableParallelism());
  });
});
