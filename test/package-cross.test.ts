import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { manifestSchema } from "../src/bundle/manifest.js";
import { STEP_DECODE_MAX_TOKENS } from "../src/cli/generation.js";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { SEA_FUSE } from "../src/package/node-binary.js";
import { loadProfile } from "../src/profile/load.js";
import { loadModel } from "../src/runtime/index.js";
import { deviceEnv, fixtureModel, houseModel, qemuRunner, run } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * Cross builds from this x64 host: the embedded-arm64-2c bundle of the house model Itera-Lite micro
 * (onnxruntime's fused contrib operators, decoded greedily by the fused loop) runs under qemu-aarch64
 * and generates exactly what the host and PyTorch generate; the win32-x64 bundle (of a PyTorch
 * fixture) is a PE executable carrying the NODE_SEA_BLOB resource.
 */
const model = fixtureModel();
const house = houseModel("itera-lite-micro");
let arm: BuildResult;
let win: BuildResult;
let work: string;

beforeAll(async () => {
  work = await tempDir("itera-pkg-cross-");
  // No shipped profile targets Windows: derive one from the laptop profile.
  const laptop = await loadProfile("laptop-x64-4c");
  const winProfile = join(work, "win-x64-4c.json");
  const { detect: _d, ...rest } = laptop;
  await writeFile(winProfile, JSON.stringify({ ...rest, name: "win-x64-4c", platform: "win32" }));
  [arm, win] = await Promise.all([
    buildBundle({
      model: house.dir,
      profile: "embedded-arm64-2c",
      quant: "fp32",
      out: join(work, "out"),
      quiet: true,
    }),
    buildBundle({
      model: model.dir,
      profile: winProfile,
      quant: "fp32",
      out: join(work, "out"),
      quiet: true,
    }),
  ]);
});

describe("embedded-arm64-2c bundle under qemu-aarch64", () => {
  it("is an aarch64 ELF executable", async () => {
    const head = (await readFile(join(arm.dir, "itera-agent"))).subarray(0, 20);
    expect(head.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    expect(head.readUInt16LE(18)).toBe(183); // EM_AARCH64
    expect(arm.self_check).toMatch(/^skipped: linux-arm64 cannot run on this host/);
  });

  it("generates the same greedy tokens as the x64 host (and as PyTorch)", async () => {
    const host = await loadModel(house.dir, { threads: 2 });
    expect(host.tokenizer.encode(house.prompt)).toEqual(house.inputIds);
    const hostIds = (await host.generate(house.prompt, { maxTokens: house.greedyIds.length, temperature: 0 }))
      .ids;
    await host.dispose();
    const { env } = await deviceEnv();
    const { stdout } = await run(
      qemuRunner,
      [
        join(arm.dir, "itera-agent"),
        "run",
        "--prompt",
        house.prompt,
        // Past the short runs that decode step by step: the decode loop runs in the arm64 bundle.
        "--max-tokens",
        String(STEP_DECODE_MAX_TOKENS + 1),
        "--temperature",
        "0",
        "--json",
      ],
      { env: { ...env, PATH: `${env.PATH}:/usr/bin:/bin` }, maxBuffer: 1 << 20 },
    );
    const out = JSON.parse(stdout);
    expect(out.mode).toBe("bundle");
    expect(out.profile).toBe("embedded-arm64-2c");
    expect(out.decode).toBe("fused");
    expect(out.ids.slice(0, hostIds.length)).toEqual(hostIds);
    expect(hostIds).toEqual(house.greedyIds);
  });

  it("starts with the V8 heap limits of its profile's 1 GB (sea-config execArgv)", async () => {
    const { env } = await deviceEnv();
    const { stdout } = await run(qemuRunner, [join(arm.dir, "itera-agent"), "info", "--json"], {
      env: { ...env, PATH: `${env.PATH}:/usr/bin:/bin` },
      maxBuffer: 1 << 20,
    });
    const info = JSON.parse(stdout);
    expect(info.agent.exec_argv).toEqual([
      "--max-old-space-size=256",
      "--max-semi-space-size=1",
      "--lite-mode",
    ]);
    // V8 adds the young generation to the old space's limit.
    expect(info.agent.heap_limit_mb).toBeGreaterThanOrEqual(256);
    expect(info.agent.heap_limit_mb).toBeLessThan(300);
  });
});

describe("win32-x64 bundle", () => {
  it("is a PE32+ executable with the NODE_SEA_BLOB resource and the fuse flipped", async () => {
    const exe = await readFile(join(win.dir, "itera-agent.exe"));
    const blob = peResource(exe, 10 /* RT_RCDATA */, "NODE_SEA_BLOB");
    // Node's SEA blob header starts with its magic number.
    expect(blob.readUInt32LE(0)).toBe(0x143da20);
    // The runtime's index (bundle.json, stored as it is) is in the blob; the model is not (issue #18).
    expect(blob.includes(Buffer.from('"schema":"itera.runtime/v1"'))).toBe(true);
    const config = await readFile(join(model.dir, "genai_config.json"));
    expect(blob.includes(config)).toBe(false);
    expect(exe.includes(Buffer.from(`${SEA_FUSE}:1`))).toBe(true);
    expect(exe.includes(Buffer.from(`${SEA_FUSE}:0`))).toBe(false);
  });

  it("holds the Windows onnxruntime and no Linux unit or installer", async () => {
    expect((await readdir(win.dir)).sort()).toEqual([
      "README.txt",
      "itera-agent.exe",
      "manifest.json",
      "model",
      "model-pack.json",
    ]);
    const m = manifestSchema.parse(JSON.parse(await readFile(join(win.dir, "manifest.json"), "utf8")));
    expect(m.target).toEqual({ platform: "win32", arch: "x64", node: "24.21.0" });
    expect(Object.keys(m.assets)).toEqual(
      expect.arrayContaining([
        "native/onnxruntime_binding.node",
        "native/onnxruntime.dll",
        "native/serialport.node",
      ]),
    );
  });
});

/**
 * Find a resource in a PE file by type id and name: DOS header -> PE header -> the resource data
 * directory -> the three-level resource tree (type, name, language) -> the data entry's RVA,
 * mapped to a file offset through the section table.
 */
function peResource(pe: Buffer, type: number, name: string): Buffer {
  expect(pe.toString("latin1", 0, 2)).toBe("MZ");
  const nt = pe.readUInt32LE(0x3c);
  expect(pe.toString("latin1", nt, nt + 4)).toBe("PE\0\0");
  const coff = nt + 4;
  expect(pe.readUInt16LE(coff)).toBe(0x8664); // IMAGE_FILE_MACHINE_AMD64
  const sections = pe.readUInt16LE(coff + 2);
  const optSize = pe.readUInt16LE(coff + 16);
  const opt = coff + 20;
  expect(pe.readUInt16LE(opt)).toBe(0x20b); // PE32+
  const resourceRva = pe.readUInt32LE(opt + 112 + 2 * 8); // data directory 2: resources
  expect(resourceRva).toBeGreaterThan(0);
  const table = opt + optSize;
  const toOffset = (rva: number): number => {
    for (let i = 0; i < sections; i++) {
      const s = table + i * 40;
      const va = pe.readUInt32LE(s + 12);
      const size = Math.max(pe.readUInt32LE(s + 8), pe.readUInt32LE(s + 16));
      if (rva >= va && rva < va + size) return rva - va + pe.readUInt32LE(s + 20);
    }
    throw new Error(`RVA ${rva} is in no section`);
  };
  const root = toOffset(resourceRva);
  const entries = (dir: number) => {
    const count = pe.readUInt16LE(dir + 12) + pe.readUInt16LE(dir + 14);
    return Array.from({ length: count }, (_, i) => ({
      id: pe.readUInt32LE(dir + 16 + i * 8),
      target: pe.readUInt32LE(dir + 16 + i * 8 + 4),
    }));
  };
  const sub = (target: number) => root + (target & 0x7fffffff);
  const typeEntry = entries(root).find((e) => e.id === type);
  expect(typeEntry, `resource type ${type}`).toBeDefined();
  const named = entries(sub(typeEntry!.target)).find((e) => {
    if ((e.id & 0x80000000) === 0) return false;
    const at = root + (e.id & 0x7fffffff);
    return pe.toString("utf16le", at + 2, at + 2 + 2 * pe.readUInt16LE(at)) === name;
  });
  expect(named, `resource ${name}`).toBeDefined();
  const lang = entries(sub(named!.target))[0]!;
  const data = sub(lang.target);
  const offset = toOffset(pe.readUInt32LE(data));
  return pe.subarray(offset, offset + pe.readUInt32LE(data + 4));
}
