/**
 * Issue #15, "nothing lost, nothing overwritten": every command that writes a folder or a file follows
 * the one rule of src/util/output.ts, and an interrupted command leaves nothing behind
 * (src/util/interrupt.ts). Real processes (dist/cli/itera.js), real files, real signals.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { checkOutputDir, OUTPUT_MARKER, writeDirAtomic } from "../src/util/output.js";
import { fixtureModel } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

const CLI = resolve("dist/cli/itera.js");
const micro = resolve("models/itera-lite-micro");
let work: string;

beforeAll(async () => {
  work = await tempDir("itera-outputs-");
});

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function itera(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((done) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { cwd: work, env: { ...process.env, ...env }, maxBuffer: 1 << 24 },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number; signal?: NodeJS.Signals }) | null;
        done({ code: e ? (e.code ?? null) : 0, signal: e?.signal ?? null, stdout, stderr });
      },
    );
  });
}

/** Every file under `dir` with its sha256: equal snapshots mean byte-identical trees. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else
        out[relative(dir, p)] = createHash("sha256")
          .update(await readFile(p))
          .digest("hex");
    }
  };
  await walk(dir);
  return out;
}

async function copyOf(src: string, name: string): Promise<string> {
  const dir = join(work, name);
  await cp(src, dir, { recursive: true });
  return dir;
}

async function folderWith(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir, { recursive: true });
  for (const [f, text] of Object.entries(files)) await writeFile(join(dir, f), text);
  return dir;
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

/** Poll until `ready()` (a file appeared), then send `sig`; resolves with how the process ended. */
async function interruptWhen(child: ChildProcess, ready: () => Promise<boolean>, sig: NodeJS.Signals) {
  let output = "";
  child.stdout?.on("data", (d) => (output += String(d)));
  child.stderr?.on("data", (d) => (output += String(d)));
  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.on("exit", (code, signal) => done({ code, signal })),
  );
  let exited = false;
  void ended.then(() => (exited = true));
  while (!exited && !(await ready())) await new Promise((r) => setTimeout(r, 25));
  if (exited) throw new Error(`the command ended before it could be interrupted:\n${output}`);
  child.kill(sig);
  return { ...(await ended), output };
}

const tmpEntries = async (dir: string) =>
  (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith(".tmp"));

/**
 * What itera left in a private TMPDIR: its temp folders (itera-*) and temp files (*.tmp). ONNX
 * Runtime writes its own .ses and mat-debug-<pid>.log there on every session, interrupted or not.
 */
const leftovers = async (dir: string) =>
  (await readdir(dir)).filter((f) => f.startsWith("itera-") || f.endsWith(".tmp"));

// Real builds and ONNX Runtime sessions on 2 shared cores: minutes, not seconds, under load.
describe("itera quantize: --out", { timeout: 600_000 }, () => {
  it("refuses a foreign non-empty folder and leaves it byte-identical; --force keeps the foreign file", async () => {
    const out = await folderWith("q-foreign", { "notes.txt": "my notes\n" });
    const before = await snapshot(out);
    const r = await itera(["quantize", micro, "--out", out, "--mode", "int8", "--quiet"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /--out is not empty and is not an earlier output of itera quantize \(notes\.txt\)/,
    );
    expect(r.stderr).toMatch(/fix: .*--force/);
    expect(await snapshot(out)).toEqual(before);

    const forced = await itera(["quantize", micro, "--out", out, "--mode", "int8", "--quiet", "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(await readFile(join(out, "notes.txt"), "utf8")).toBe("my notes\n");
    const files = await readdir(out);
    expect(files).toEqual(expect.arrayContaining(["model.onnx", "genai_config.json", OUTPUT_MARKER]));
    const marker = JSON.parse(await readFile(join(out, OUTPUT_MARKER), "utf8"));
    expect(marker.command).toBe("itera quantize");
    expect(marker.files).not.toContain("notes.txt");
    expect(await tmpEntries(work)).toEqual([]);

    // Its own earlier output plus a foreign file: still refused without --force, untouched.
    const mixed = await snapshot(out);
    const again = await itera(["quantize", micro, "--out", out, "--mode", "fp16", "--quiet"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(
      /earlier output of itera quantize but also holds 1 file\(s\) it did not write \(notes\.txt\)/,
    );
    expect(await snapshot(out)).toEqual(mixed);
  });

  it("replaces its own earlier output without --force", async () => {
    const out = join(work, "q-own");
    expect((await itera(["quantize", micro, "--out", out, "--mode", "int8", "--quiet"])).code).toBe(0);
    const int8 = await snapshot(out);
    const r = await itera(["quantize", micro, "--out", out, "--mode", "fp16", "--quiet", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).mode).toBe("fp16");
    const fp16 = await snapshot(out);
    expect(Object.keys(fp16).sort()).toEqual(Object.keys(int8).sort());
    expect(fp16["model.onnx"]).not.toBe(int8["model.onnx"]);
    expect(await tmpEntries(work)).toEqual([]);
  });

  it("never writes over its input: the output is the input, its parent, or inside it", async () => {
    const parent = join(work, "q-parent");
    const src = await copyOf(micro, "q-parent/m");
    const before = await snapshot(parent);
    for (const [out, how] of [
      [src, "is"],
      [parent, "contains"],
      [join(src, "int8"), "lies inside"],
    ] as const) {
      const r = await itera(["quantize", src, "--out", out, "--mode", "int8", "--quiet"]);
      expect(r.code, out).toBe(1);
      expect(r.stderr).toContain(`--out ${how} the input`);
      expect(await snapshot(parent)).toEqual(before);
    }
  });

  it("refuses a plain file at --out and leaves it as it was", async () => {
    const file = join(work, "q-file");
    await writeFile(file, "not a folder\n");
    const r = await itera(["quantize", micro, "--out", file, "--mode", "int8", "--quiet"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--out is a file, not a folder/);
    expect(await readFile(file, "utf8")).toBe("not a folder\n");
  });
});

describe("itera build: --out", { timeout: 600_000 }, () => {
  const model = fixtureModel();
  // rpi4 is arm64: no start check of the executable on this host, so each build is short.
  const build = (out: string, ...extra: string[]) => buildFrom(model.dir, out, ...extra);
  const buildFrom = (dir: string, out: string, ...extra: string[]) =>
    itera([
      "build",
      "--model",
      dir,
      "--profile",
      "rpi4",
      "--quant",
      "fp32",
      "--out",
      out,
      "--json",
      ...extra,
    ]);

  it("refuses an existing file as --out before building, and a plain file at the bundle folder", async () => {
    const file = join(work, "b-file");
    await writeFile(file, "x");
    const r = await build(file);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error: --out: .*b-file is a file, not a folder/);
    expect(r.stderr).not.toMatch(/internal error/);
    expect(await readFile(file, "utf8")).toBe("x");
  });

  it("refuses a folder holding someone else's files; --force replaces only the bundle's own; a rebuild replaces its own", async () => {
    const out = join(work, "b-out");
    const first = await build(out);
    expect(first.code, first.stderr).toBe(0);
    const { dir, tarball } = JSON.parse(first.stdout) as { dir: string; tarball: string };
    expect((await stat(tarball)).isFile()).toBe(true);

    // The same build again: its own earlier output (manifest.json names the folder), replaced.
    const rebuilt = await build(out);
    expect(rebuilt.code, rebuilt.stderr).toBe(0);

    // A file of the user's inside the bundle folder: refused, byte-identical.
    await writeFile(join(dir, "notes.txt"), "keep me\n");
    const before = await snapshot(out);
    const refused = await build(out);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/also holds 1 file\(s\) it did not write \(notes\.txt\)/);
    expect(await snapshot(out)).toEqual(before);

    const forced = await build(out, "--force");
    expect(forced.code, forced.stderr).toBe(0);
    expect(await readFile(join(dir, "notes.txt"), "utf8")).toBe("keep me\n");
    const manifest = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8"));
    expect(Object.keys(manifest.files)).not.toContain("notes.txt");
    expect((await readdir(out)).filter((f) => f.startsWith("."))).toEqual([]);

    // A foreign file where the archive goes (the folder is the bundle's own again): refused, untouched.
    await rm(join(dir, "notes.txt"));
    await rm(tarball);
    await writeFile(tarball, "not an archive");
    const tar = await build(out);
    expect(tar.code).toBe(1);
    expect(tar.stderr).toMatch(/--out exists and is not an earlier output of itera build/);
    expect(await readFile(tarball, "utf8")).toBe("not an archive");
  });

  it("refuses an output inside the model folder", async () => {
    const src = await copyOf(model.dir, "b-model");
    const before = await snapshot(src);
    const r = await buildFrom(src, join(src, "bundles"));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--out lies inside the input");
    expect(await snapshot(src)).toEqual(before);
  });
});

describe("interrupted (SIGINT/SIGTERM): nothing left behind", { timeout: 600_000 }, () => {
  async function privateTmp(name: string): Promise<string> {
    const dir = join(work, name);
    await mkdir(dir);
    return dir;
  }

  const startBuild = (out: string, tmp: string) =>
    spawn(
      process.execPath,
      [
        CLI,
        "build",
        "--model",
        fixtureModel().dir,
        "--profile",
        "laptop-x64-4c",
        "--quant",
        "fp32",
        "--out",
        out,
      ],
      { cwd: work, env: { ...process.env, TMPDIR: tmp }, stdio: ["ignore", "pipe", "pipe"] },
    );

  it("itera build, SIGINT while the bundle folder is being filled", async () => {
    const tmp = await privateTmp("int-build-tmp");
    const out = join(work, "int-build-out");
    const r = await interruptWhen(
      startBuild(out, tmp),
      async () => (await tmpEntries(out)).length > 0,
      "SIGINT",
    );
    expect(r.signal ?? r.code, r.output).toBe(r.signal ? "SIGINT" : 130);
    expect(await leftovers(tmp)).toEqual([]);
    expect(await readdir(out).catch(() => [])).toEqual([]);
  });

  it("itera build, SIGTERM early (work folder made, nothing packaged yet)", async () => {
    const tmp = await privateTmp("term-build-tmp");
    const out = join(work, "term-build-out");
    const r = await interruptWhen(
      startBuild(out, tmp),
      async () => (await readdir(tmp)).some((f) => f.startsWith("itera-build-")),
      "SIGTERM",
    );
    expect(r.signal ?? r.code, r.output).toBe(r.signal ? "SIGTERM" : 143);
    expect(await leftovers(tmp)).toEqual([]);
    expect(await exists(out)).toBe(false);
  });

  it("itera verify of a .tar.gz, SIGINT while it is unpacked: its temp folder is removed", async () => {
    const tmp = await privateTmp("int-verify-tmp");
    // A folder whose 256 MB of zeros pack to a small archive but take a while to unpack and hash.
    const bundle = join(work, "big-bundle");
    await mkdir(bundle);
    await writeFile(join(bundle, "manifest.json"), "{}");
    await writeFile(join(bundle, "itera-agent"), Buffer.alloc(256 << 20));
    const archive = join(work, "big-bundle.tar.gz");
    await new Promise<void>((done, fail) =>
      execFile("tar", ["-czf", archive, "-C", work, "big-bundle"], (e) => (e ? fail(e) : done())),
    );
    await rm(bundle, { recursive: true });
    const child = spawn(process.execPath, [CLI, "verify", archive], {
      cwd: work,
      env: { ...process.env, TMPDIR: tmp },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const r = await interruptWhen(
      child,
      async () => (await readdir(tmp)).some((f) => f.startsWith("itera-verify-")),
      "SIGINT",
    );
    expect(r.signal ?? r.code, r.output).toBe(r.signal ? "SIGINT" : 130);
    expect(await leftovers(tmp)).toEqual([]);
    await rm(archive, { force: true });
  });

  const startQuantize = (out: string, tmp: string, mode: string) =>
    spawn(process.execPath, [CLI, "quantize", micro, "--out", out, "--mode", mode, "--quiet"], {
      cwd: work,
      env: { ...process.env, TMPDIR: tmp },
      stdio: ["ignore", "pipe", "pipe"],
    });

  it("itera quantize, SIGINT while the output folder is being filled", async () => {
    const tmp = await privateTmp("int-q-tmp");
    const parent = await privateTmp("int-q-parent");
    const out = join(parent, "int8");
    const r = await interruptWhen(
      startQuantize(out, tmp, "int8"),
      async () => (await tmpEntries(parent)).length > 0,
      "SIGINT",
    );
    expect(r.signal, r.output).toBe("SIGINT");
    expect(await readdir(parent)).toEqual([]);
    expect(await leftovers(tmp)).toEqual([]);
  });

  it("itera quantize --mode auto, SIGINT while it measures candidates in its scratch folder", async () => {
    const tmp = await privateTmp("int-qa-tmp");
    const out = join(work, "int-qa-out");
    const r = await interruptWhen(
      startQuantize(out, tmp, "auto"),
      async () => (await readdir(tmp)).some((f) => f.startsWith("itera-quantize-")),
      "SIGINT",
    );
    expect(r.signal, r.output).toBe("SIGINT");
    expect(await leftovers(tmp)).toEqual([]);
    expect(await exists(out)).toBe(false);
  });
});

describe("bench --save, keygen, fleet report --out", { timeout: 600_000 }, () => {
  it("bench --save to a folder is refused before benchmarking; a foreign file is not overwritten", async () => {
    const dir = await folderWith("save-dir", {});
    const r = await itera(["bench", micro, "--tests", "tg4", "--no-energy", "--save", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--save is a folder, not a file/);
    expect(r.stdout).toBe(""); // no results: it stopped before the benchmark
    expect(await readdir(dir)).toEqual([]);

    const foreign = join(work, "save-foreign.txt");
    await writeFile(foreign, "my results\n");
    const f = await itera(["bench", micro, "--tests", "tg4", "--no-energy", "--save", foreign]);
    expect(f.code).toBe(1);
    expect(f.stderr).toMatch(/--save exists and is not an earlier output of the benchmark/);
    expect(await readFile(foreign, "utf8")).toBe("my results\n");

    const inside = await itera(["bench", micro, "--no-energy", "--save", join(micro, "results.md")]);
    expect(inside.code).toBe(1);
    expect(inside.stderr).toContain("--save lies inside the input");
    expect(await exists(join(micro, "results.md"))).toBe(false);
  });

  it("bench --save replaces its own earlier output", async () => {
    const file = join(work, "save-own.csv");
    const args = [
      "bench",
      micro,
      "--tests",
      "tg4",
      "-t",
      "1",
      "-r",
      "1",
      "--warmup",
      "0",
      "--min-duration",
      "0",
    ];
    const first = await itera([...args, "--no-energy", "-o", "csv", "--save", file]);
    expect(first.code, first.stderr).toBe(0);
    const second = await itera([...args, "--no-energy", "-o", "md", "--save", file]);
    expect(second.code, second.stderr).toBe(0);
    expect(await readFile(file, "utf8")).toMatch(/^\| model +\| quant/);
  });

  it("keygen refuses a file as --out and an existing public key of someone else's", async () => {
    const file = join(work, "kg-file");
    await writeFile(file, "x");
    const r = await itera(["keygen", "--out", file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--out: .*kg-file is a file, not a folder/);

    const dir = await folderWith("kg-pub", { "itera-signing.pub": "mine\n" });
    const p = await itera(["keygen", "--out", dir]);
    expect(p.code).toBe(1);
    expect(p.stderr).toMatch(/itera-signing\.pub/);
    expect(await readFile(join(dir, "itera-signing.pub"), "utf8")).toBe("mine\n");
    expect(await readdir(dir)).toEqual(["itera-signing.pub"]);
    const forced = await itera(["keygen", "--out", dir, "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(await readFile(join(dir, "itera-signing.pub"), "utf8")).toMatch(/BEGIN PUBLIC KEY/);
  });

  it("fleet report --out: a foreign folder and the folder of the history database are refused first", async () => {
    const out = await folderWith("fleet-foreign", { "report.md": "my report\n" });
    const db = join(work, "fleet-db", "fleet.db");
    const r = await itera(["fleet", "report", "--db", db, "--out", out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--out is not empty and is not an earlier output of itera fleet/);
    expect(await readFile(join(out, "report.md"), "utf8")).toBe("my report\n");
    const d = await itera(["fleet", "report", "--db", db, "--out", join(work, "fleet-db")]);
    expect(d.code).toBe(1);
    expect(d.stderr).toContain("--out contains the input");
  });
});

describe("writeDirAtomic", () => {
  const spec = { command: "itera test", option: "--out" };

  it("--force: replaces the files of its earlier output (stale ones removed), keeps the others", async () => {
    const dir = join(work, "wda-force");
    await writeDirAtomic(await checkOutputDir(dir, spec), async (tmp) => {
      await mkdir(join(tmp, "sub"));
      await writeFile(join(tmp, "a.txt"), "a1");
      await writeFile(join(tmp, "sub", "old.txt"), "stale");
    });
    await writeFile(join(dir, "mine.txt"), "user");
    await expect(checkOutputDir(dir, spec)).rejects.toThrow(/mine\.txt/);
    await expect(checkOutputDir(dir, { ...spec, force: false })).rejects.toMatchObject({
      fix: expect.stringMatching(/--force/),
    });
    await writeDirAtomic(await checkOutputDir(dir, { ...spec, force: true }), async (tmp) => {
      await writeFile(join(tmp, "a.txt"), "a2");
      await writeFile(join(tmp, "b.txt"), "b");
    });
    expect(await snapshot(dir)).toEqual({
      [OUTPUT_MARKER]: expect.any(String),
      "a.txt": createHash("sha256").update("a2").digest("hex"),
      "b.txt": createHash("sha256").update("b").digest("hex"),
      "mine.txt": createHash("sha256").update("user").digest("hex"),
    });
  });

  it("a file that appears in the folder while the command runs is not deleted", async () => {
    const dir = join(work, "wda-race");
    await writeDirAtomic(await checkOutputDir(dir, spec), async (tmp) => writeFile(join(tmp, "a.txt"), "1"));
    const target = await checkOutputDir(dir, spec);
    await expect(
      writeDirAtomic(target, async (tmp) => {
        await writeFile(join(tmp, "a.txt"), "2");
        await writeFile(join(dir, "late.txt"), "arrived meanwhile");
      }),
    ).rejects.toThrow(/files appeared in --out .*late\.txt/);
    expect(await readFile(join(dir, "late.txt"), "utf8")).toBe("arrived meanwhile");
    expect(await readFile(join(dir, "a.txt"), "utf8")).toBe("1");
    expect(await tmpEntries(work)).toEqual([]);
  });

  it("a failed fill leaves nothing, not even the parent folders it made", async () => {
    const dir = join(work, "wda-fail", "deep", "out");
    await expect(
      writeDirAtomic(await checkOutputDir(dir, spec), async (tmp) => {
        await writeFile(join(tmp, "a.txt"), "1");
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(await exists(join(work, "wda-fail"))).toBe(false);
  });
});
