import { cp, mkdir, mkdtemp, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  findIcuDataInElf,
  keepIcuItem,
  readCommonData,
  trimCommonData,
  trimIcuData,
} from "../src/package/icu-data.js";
import {
  describeNodeBinary,
  fetchNodeTarball,
  iteraCacheDir,
  NODE_VERSION,
  type NodeBinary,
  nodeBinary,
  SEA_FUSE,
} from "../src/package/node-binary.js";
import { sha256File } from "../src/util/fs.js";
import { qemuRunner, run } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * English-only ICU data in the official Node 24 binaries: the package format is read and rewritten
 * as ICU reads it, and the binaries a bundle embeds (trimmed, stripped) still do everything Intl and
 * Unicode work the agent and its dependencies can ask of them: natively on x64, under qemu on arm64.
 */

let work: string;
let x64: NodeBinary;
let arm64: NodeBinary;

beforeAll(async () => {
  work = await tempDir("itera-icu-");
  x64 = await nodeBinary({ platform: "linux", arch: "x64" });
  arm64 = await nodeBinary({ platform: "linux", arch: "arm64" });
});

function pristine(arch: "x64" | "arm64"): string {
  return join(iteraCacheDir(), "node", `node-linux-${arch}-${NODE_VERSION}`, "node");
}

describe("the ICU common-data package", () => {
  it("is found in the official binary and rewritten with root, en* and every non-locale item", async () => {
    const elf = await readFile(pristine("arm64"));
    const found = findIcuDataInElf(elf);
    expect(found?.symbol).toBe("icudt78_dat");
    const pkg = elf.subarray(found!.fileOffset, found!.fileOffset + found!.bytes);
    const before = readCommonData(pkg);
    expect(before.items.length).toBeGreaterThan(4000);

    const trimmed = trimCommonData(pkg);
    expect(trimmed.data.length).toBe(pkg.length);
    const after = readCommonData(trimmed.data);
    const kept = before.items.filter((i) => keepIcuItem(i.name));
    expect(after.items.map((i) => i.fullName)).toEqual(kept.map((i) => i.fullName));
    // Every kept item has its bytes, its length and 16-byte alignment; after the last one, zeros.
    for (const [i, item] of after.items.entries()) {
      const was = kept[i]!;
      expect(item.offset % 16).toBe(0);
      if (i < after.items.length - 1) expect(item.length).toBe(was.length);
      expect(
        trimmed.data
          .subarray(item.offset, item.offset + was.length)
          .equals(pkg.subarray(was.offset, was.offset + was.length)),
      ).toBe(true);
    }
    expect(trimmed.data.subarray(trimmed.keptBytes).every((b) => b === 0)).toBe(true);
    expect(trimmed.keptBytes).toBeLessThan(pkg.length * 0.45);

    const names = [...new Set(after.items.map((i) => i.name))];
    const mustKeep = [
      ...["root.res", "en.res", "en_GB.res", "coll/root.res", "coll/ucadata.icu", "zone/en.res"],
      ...["nfkc.nrm", "unames.icu", "uemoji.icu", "uts46.nrm", "cnvalias.icu", "pool.res", "res_index.res"],
      ...["brkitr/word.brk", "brkitr/cjdict.dict", "brkitr/ja.res", "zoneinfo64.res", "supplementalData.res"],
    ];
    expect(mustKeep.filter((name) => !names.includes(name))).toEqual([]);
    const dropped = ["de.res", "coll/de.res", "coll/de__PHONEBOOK.res", "zone/fr.res", "lang/ja.res"];
    dropped.push("translit/root.res", "curr/zh.res");
    expect(dropped.filter((name) => names.includes(name))).toEqual([]);
  });

  it("refuses what is not a package it can rewrite, and a binary without the symbol", async () => {
    const pkg = Buffer.alloc(256);
    expect(() => readCommonData(pkg)).toThrow(/magic 0xda27/);
    pkg.writeUInt16LE(32, 0);
    pkg[2] = 0xda;
    pkg[3] = 0x27;
    pkg.write("ResB", 12, "latin1");
    pkg[16] = 1;
    expect(() => readCommonData(pkg)).toThrow(/not an ICU common-data package \(ResB/);
    pkg.write("CmnD", 12, "latin1");
    pkg.writeUInt32LE(2, 32); // two items, listed out of order: ICU's binary search would miss them
    pkg.writeUInt32LE(20, 36);
    pkg.writeUInt32LE(32, 40);
    pkg.writeUInt32LE(26, 44);
    pkg.writeUInt32LE(48, 48);
    pkg.write("p/b.r\0p/a.r\0", 52, "latin1");
    expect(() => readCommonData(pkg)).toThrow(/out of order at p\/a\.r/);
    pkg.write("p/a.r\0p/b.r\0", 52, "latin1");
    expect(readCommonData(pkg).items.map((i) => [i.name, i.offset, i.length])).toEqual([
      ["a.r", 64, 16],
      ["b.r", 80, 176],
    ]);

    const stripped = await readFile(x64.path);
    expect(() => trimIcuData(stripped)).toThrow(/no icudt\*_dat symbol/);
  });
});

/** What the agent and its dependencies may ask of ICU, printed as JSON by the binary under test. */
const intlScript = `
const d = new Date(Date.UTC(2026, 11, 4, 15, 30));
const words = (loc, t) => [...new Intl.Segmenter(loc, { granularity: "word" }).segment(t)].map((s) => s.segment);
console.log(JSON.stringify({
  icu: process.versions.icu,
  dtf: new Intl.DateTimeFormat("en-US", { dateStyle: "full", timeStyle: "long", timeZone: "America/New_York" }).format(d),
  gb: new Intl.DateTimeFormat("en-GB", { dateStyle: "long", timeZone: "UTC" }).format(d),
  local: d.toLocaleString("en-US", { timeZone: "UTC" }),
  number: new Intl.NumberFormat("en-US", { style: "currency", currency: "EUR" }).format(1234567.891),
  nfd: "\\u00e9".normalize("NFD").length,
  nfkc: "\\ufb01".normalize("NFKC"),
  letter: /\\p{L}/u.test("\\u0436") && !/\\p{L}/u.test("1"),
  words: words("en", "Hello, wide world!"),
  cjk: words("en", "\\u6771\\u4eac\\u90fd\\u306b\\u4f4f\\u3093\\u3067\\u3044\\u307e\\u3059").length,
  cp1252: new TextDecoder("windows-1252").decode(Uint8Array.from([0x80, 0x41])),
  sorted: ["b", "a", "B", "\\u00e9", "e"].sort((a, b) => a.localeCompare(b)),
  upper: "stra\\u00dfe".toUpperCase(),
  zone: new Intl.DateTimeFormat("en-US", { timeZone: "Asia/Tokyo", timeZoneName: "long" }).format(d),
  de: new Intl.DateTimeFormat("de-DE", { dateStyle: "full", timeZone: "UTC" }).format(d),
  deLocale: new Intl.NumberFormat("de").resolvedOptions().locale,
  deNumber: new Intl.NumberFormat("de").format(1234.5),
  supported: Intl.DateTimeFormat.supportedLocalesOf(["de", "en-GB", "ja"]),
  phonebook: new Intl.Collator("de-u-co-phonebk").resolvedOptions().locale,
}));
`;

function expectEnglishOnly(out: string): void {
  const r = JSON.parse(out) as Record<string, unknown>;
  expect(r).toEqual({
    icu: "78.3",
    dtf: "Friday, December 4, 2026 at 10:30:00 AM EST",
    gb: "4 December 2026",
    local: "12/4/2026, 3:30:00 PM",
    number: "€1,234,567.89",
    nfd: 2,
    nfkc: "fi",
    letter: true,
    words: ["Hello", ",", " ", "wide", " ", "world", "!"],
    cjk: 7, // the dictionary's words, as with full ICU (one run of text without brkitr/ja.res)
    cp1252: "€A",
    sorted: ["a", "b", "B", "e", "é"],
    upper: "STRASSE",
    zone: "12/5/2026, Japan Standard Time",
    // Another locale falls back to English instead of failing.
    de: "Friday, December 4, 2026",
    deLocale: "en-US",
    deNumber: "1,234.5",
    supported: ["en-GB"],
    phonebook: "en-US",
  });
}

describe("the Node binaries a bundle embeds", () => {
  it("carry English-only ICU, the SEA fuse, and leave the cached originals as fetched", async () => {
    for (const [arch, bin] of [
      ["x64", x64],
      ["arm64", arm64],
    ] as const) {
      expect("skipped" in bin.icu ? bin.icu.skipped : "trimmed").toBe("trimmed");
      if ("skipped" in bin.icu) continue;
      expect(bin.icu.keptItems).toBeLessThan(bin.icu.items / 3);
      expect(bin.bytes).toBeLessThan(bin.rawBytes);
      expect((await readFile(bin.path)).includes(SEA_FUSE)).toBe(true);
      const stamp = JSON.parse(await readFile(join(pristine(arch), "..", "binary.json"), "utf8")) as {
        raw_sha256: string;
      };
      expect(await sha256File(pristine(arch))).toBe(stamp.raw_sha256);
      // The original still holds the full package.
      const elf = await readFile(pristine(arch));
      const found = findIcuDataInElf(elf)!;
      expect(
        readCommonData(elf.subarray(found.fileOffset, found.fileOffset + found.bytes)).items.length,
      ).toBe(bin.icu.items);
    }
  });

  it("x64: Intl, normalization, segmentation, converters and collation work natively; German falls back to English", async () => {
    const script = join(work, "intl.js");
    await writeFile(script, intlScript);
    const { stdout } = await run(x64.path, [script], { env: { PATH: "/usr/bin:/bin", LANG: "C" } });
    expectEnglishOnly(stdout);
  });

  it("arm64 (qemu): the same", async () => {
    const script = join(work, "intl.js");
    await writeFile(script, intlScript);
    const { stdout } = await run(qemuRunner, [arm64.path, script], {
      env: { PATH: "/usr/bin:/bin", LANG: "C" },
    });
    expectEnglishOnly(stdout);
  });
});

describe("itera build --full-icu", () => {
  it("embeds the official binary's whole ICU, stripped and cached beside the English-only one: German formats as German", async () => {
    const full = await nodeBinary({ platform: "linux", arch: "x64" }, "full");
    expect(full.icu).toEqual({ skipped: "kept whole (--full-icu)" });
    expect(describeNodeBinary(full)).toMatch(/full ICU: kept whole \(--full-icu\)/);
    expect(full.path).not.toBe(x64.path);
    expect(full.bytes).toBe(x64.bytes); // trimming zero-fills in place: same size, other bytes
    expect((await readFile(full.path)).includes(SEA_FUSE)).toBe(true);
    const script = join(work, "intl-full.js");
    await writeFile(script, intlScript);
    const { stdout } = await run(full.path, [script], { env: { PATH: "/usr/bin:/bin", LANG: "C" } });
    const r = JSON.parse(stdout) as Record<string, unknown>;
    expect(r.de).toBe("Freitag, 4. Dezember 2026");
    expect(r.deNumber).toBe("1.234,5");
    expect(r.supported).toEqual(["de", "en-GB", "ja"]);
    // The English-only binary is still what a default build embeds.
    expect((await nodeBinary({ platform: "linux", arch: "x64" })).path).toBe(x64.path);
  });
});

describe("without a strip tool", () => {
  it("the trimmed binary is embedded unstripped and not cached; a build with the tool strips it", async () => {
    const x64Target = { platform: "linux", arch: "x64" } as const;
    const tarball = await fetchNodeTarball(x64Target);
    const cache = await mkdtemp(join(work, "xdg-"));
    await mkdir(join(cache, "itera", "node"), { recursive: true });
    await cp(tarball, join(cache, "itera", "node", basename(tarball)));
    const bin = join(work, "bin"); // tar and gzip, no strip
    await mkdir(bin);
    for (const tool of ["tar", "gzip"]) await symlink(`/usr/bin/${tool}`, join(bin, tool));
    const saved = { xdg: process.env.XDG_CACHE_HOME, path: process.env.PATH };
    process.env.XDG_CACHE_HOME = cache;
    process.env.PATH = bin;
    try {
      const unstripped = await nodeBinary(x64Target);
      expect(unstripped.strip).toEqual({ skipped: "strip is not installed" });
      expect(unstripped.bytes).toBe(unstripped.rawBytes);
      expect(describeNodeBinary(unstripped)).toMatch(
        /^not stripped: strip is not installed; ICU data English-only 33\.1 MB -> 12\.9 MB$/,
      );
      const folder = join(cache, "itera", "node", `node-linux-x64-${NODE_VERSION}`);
      expect((await readdir(folder)).sort()).toEqual(["binary.json", "node", "node.unstripped"]);
      const { stdout } = await run(unstripped.path, [
        "-p",
        "new Intl.NumberFormat('de').resolvedOptions().locale",
      ]);
      expect(stdout.trim()).toBe("en-US");

      process.env.PATH = saved.path;
      const stripped = await nodeBinary(x64Target);
      expect(stripped.strip).toEqual({ tool: "strip" });
      expect(stripped.bytes).toBeLessThan(stripped.rawBytes);
      expect(stripped.icu).toEqual(unstripped.icu);
      expect((await readdir(folder)).sort()).toEqual([
        "binary.json",
        "node",
        "node.embed",
        "node.embed.json",
      ]);
    } finally {
      process.env.PATH = saved.path;
      if (saved.xdg === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = saved.xdg;
    }
  });
});
