/**
 * English-only ICU data (src/package/icu-data.ts): the Node 24 binary a bundle embeds with full ICU
 * (the pristine binary, stripped, as builds did before) against the one builds embed now (ICU data
 * trimmed, then stripped), per Linux target: size raw and gzipped (level 6, as `tar -czf` stores it),
 * and the peak RSS of `-e 0` and of an Intl script (en-US dates, numbers, collation, segmentation),
 * in interleaved rounds. linux-arm64 runs under qemu-aarch64 (its RSS is the emulator's process:
 * compare it only with itself).
 *
 * Run (from the repository root):
 *   npx esbuild bench/icu-data.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/icu-data.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/icu-data.mjs [--rounds 5]
 */
import { execFile } from "node:child_process";
import { createReadStream } from "node:fs";
import { cp, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { createGzip } from "node:zlib";
import { NODE_VERSION, nodeBinary, stripToolFor } from "../src/package/node-binary.js";
import type { Target } from "../src/package/target.js";
import { markdownTable } from "../src/util/table.js";

const run = promisify(execFile);
const argv = process.argv.slice(2);
const rounds = Number(argv.includes("--rounds") ? argv[argv.indexOf("--rounds") + 1] : "5");
const qemu = resolve("tools", "qemu", "run-arm64.sh");
const loadStart = loadavg()[0]!.toFixed(1);
const work = await mkdtemp(join(tmpdir(), "itera-bench-icu-"));

const intlScript = join(work, "intl.js");
await writeFile(
  intlScript,
  `const d = new Date(Date.UTC(2026, 11, 4, 15, 30));
let n = 0;
for (let i = 0; i < 200; i++) {
  n += new Intl.DateTimeFormat("en-US", { dateStyle: "full", timeStyle: "long", timeZone: "America/New_York" }).format(d).length;
  n += new Intl.NumberFormat("en-US", { style: "currency", currency: "EUR" }).format(i * 1.5).length;
  n += ["b", "a", "é"].sort((a, b) => a.localeCompare(b)).length;
  n += [...new Intl.Segmenter("en", { granularity: "word" }).segment("Hello, wide world!")].length;
}
console.log(n);
`,
);

async function gzippedBytes(file: string): Promise<number> {
  let n = 0;
  for await (const chunk of createReadStream(file).pipe(createGzip({ level: 6 })))
    n += (chunk as Buffer).length;
  return n;
}

async function peakRssMb(target: Target, exe: string, args: string[]): Promise<number> {
  const cmd = target.arch === "arm64" ? [qemu, exe, ...args] : [exe, ...args];
  const r = await run("/usr/bin/time", ["-f", "itera-peak-rss %M", ...cmd], {
    env: { PATH: "/usr/bin:/bin" },
  });
  return Number(/itera-peak-rss (\d+)/.exec(r.stderr)?.[1]) / 1024;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
const mb = (b: number) => (b / 1e6).toFixed(1);

const sizeRows: string[][] = [];
const rssRows: string[][] = [];
for (const target of [
  { platform: "linux", arch: "x64" },
  { platform: "linux", arch: "arm64" },
] as Target[]) {
  const label = `linux-${target.arch}${target.arch === "arm64" ? " (qemu)" : ""}`;
  process.stderr.write(`${label}: preparing both binaries...\n`);
  const after = await nodeBinary(target);
  const strip = stripToolFor(target);
  if (!("tool" in strip) || !("tool" in after.strip)) throw new Error(`no strip tool for ${label}`);
  const pristine = join(after.path, "..", "node");
  const stripped = join(work, `node-${target.arch}-stripped`);
  await run(strip.tool, ["-o", stripped, pristine]);
  // Both measured as copies written the same way: how recently and how a file was written changes
  // the page-cache folios it maps in, so its RSS (bench/package.ts).
  const binaries = {
    "full ICU": join(work, `node-${target.arch}-full-icu`),
    "English-only ICU": join(work, `node-${target.arch}-en-icu`),
  };
  await cp(stripped, binaries["full ICU"]);
  await cp(after.path, binaries["English-only ICU"]);
  for (const [name, file] of Object.entries(binaries)) {
    sizeRows.push([label, name, mb((await stat(file)).size), mb(await gzippedBytes(file))]);
  }
  const rss: Record<string, Record<string, number[]>> = {};
  for (let r = 0; r < rounds; r++) {
    process.stderr.write(`${label}: round ${r + 1}/${rounds}\n`);
    // Interleaved, the order alternating, so that load drifts touch both alike.
    const order = Object.entries(binaries);
    if (r % 2) order.reverse();
    for (const [name, file] of order) {
      for (const [what, args] of [
        ["-e 0", ["-e", "0"]],
        ["Intl script", [intlScript]],
      ] as const) {
        const byBinary = rss[what] ?? {};
        rss[what] = byBinary;
        byBinary[name] = [...(byBinary[name] ?? []), await peakRssMb(target, file, [...args])];
      }
    }
  }
  for (const [what, byBinary] of Object.entries(rss)) {
    const full = median(byBinary["full ICU"]!);
    const en = median(byBinary["English-only ICU"]!);
    rssRows.push([label, what, full.toFixed(1), en.toFixed(1), (en / full).toFixed(3)]);
  }
}
await rm(work, { recursive: true, force: true });

const machine = `${cpus()[0]?.model.trim() ?? "?"} × ${cpus().length}; load average ${loadStart} at the start, ${loadavg()[0]!.toFixed(1)} at the end`;
process.stdout.write(`
Node ${NODE_VERSION} as a bundle embeds it, stripped, with full and English-only ICU data. Machine: ${machine}; ${new Date().toISOString().slice(0, 16)}Z.

${markdownTable(["target", "ICU data", "binary MB", "gzipped MB"], sizeRows)}

Peak RSS, MB (median of ${rounds} interleaved rounds; /usr/bin/time %M; under qemu the emulator's process).

${markdownTable(["target", "command", "full ICU", "English-only ICU", "ratio"], rssRows)}
`);
