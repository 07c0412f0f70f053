/**
 * `itera flash` over ssh: copy throughput by upload chunk size against plain `scp` of the same bytes
 * (measured in the same run), the time of every step, and what resuming an interrupted copy saves.
 * The device is a real sshd on loopback (the tests' fixture) with a temp folder as its root, so the
 * figures show the tool's own overhead (ssh, chunking, hashing), not a network.
 *
 * Run (from the repository root, as root: the fixture starts sshd):
 *   npx esbuild bench/flash.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/flash.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/flash.mjs [--mb 64] [--reps 3] [--append docs/benchmarks.md]
 */
import { execFile } from "node:child_process";
import { appendFile, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { flashOverSsh, type SshFlashOptions } from "../src/deploy/flash-ssh.js";
import { sshOptions } from "../src/deploy/ssh.js";
import { DEFAULT_CHUNK_BYTES } from "../src/deploy/upload.js";
import { markdownTable } from "../src/util/table.js";
import { makeFixtureBundle, signingKeys } from "../test/fixtures/deploy/bundle.js";
import { startSshd } from "../test/fixtures/deploy/sshd.js";

const run = promisify(execFile);
const argv = process.argv.slice(2);
const flagValue = (flag: string, fallback: string) =>
  argv.includes(flag) ? argv[argv.indexOf(flag) + 1]! : fallback;
const mb = Number(flagValue("--mb", "64"));
const reps = Number(flagValue("--reps", "3"));
const append = argv.includes("--append") ? flagValue("--append", "") : undefined;

const MiB = 1024 * 1024;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const load = loadavg()[0]!.toFixed(1);

const work = await mkdtemp(join(tmpdir(), "itera-bench-flash-"));
const sshd = await startSshd();
try {
  const keys = signingKeys();
  const bundle = await makeFixtureBundle(join(work, "b"), {
    version: "1.0.0",
    padBytes: mb * MiB,
    signWith: keys.privatePem,
  });
  const agentBytes = (await stat(join(bundle, "itera-agent"))).size;
  const target = {
    destination: "root@127.0.0.1",
    port: sshd.port,
    identity: sshd.identity,
    knownHosts: sshd.knownHosts,
  };
  let n = 0;
  const flash = async (extra: Partial<SshFlashOptions> = {}, prefix?: string) => {
    const root = prefix ?? join(work, `dev-${n++}`);
    await mkdir(root, { recursive: true });
    const t0 = performance.now();
    const r = await flashOverSsh({
      bundle,
      target,
      prefix: root,
      systemctl: null,
      healthTimeoutS: 10,
      healthSettleS: 0,
      keep: 3,
      ...extra,
    });
    return { r, ms: performance.now() - t0, root };
  };

  // Baseline: scp (-O: the classic protocol; the test sshd has no sftp subsystem) of the same file with
  // the same ssh options: one connection, no chunking, no hashing.
  const scpMs: number[] = [];
  for (let i = 0; i < reps; i++) {
    const dest = join(work, `scp-${i}`);
    await mkdir(dest);
    const t0 = performance.now();
    await run("scp", [
      "-q",
      "-O",
      ...sshOptions(target)
        .filter((o) => o !== "-T")
        .map((o) => (o === "-p" ? "-P" : o)),
      join(bundle, "itera-agent"),
      `${target.destination}:${dest}/itera-agent`,
    ]);
    scpMs.push(performance.now() - t0);
    await rm(dest, { recursive: true });
  }
  // scp's time includes its ssh handshake: compare it with itera's connect + copy steps.
  const rows: (string | number)[][] = [
    [
      "scp (baseline)",
      "-",
      mean(scpMs).toFixed(0),
      (agentBytes / MiB / (mean(scpMs) / 1000)).toFixed(1),
      "1.00",
    ],
  ];
  let stepsOfDefault: { id: string; ms?: number }[] = [];
  let fullDefault = 0;
  for (const chunk of [4, 16, 64]) {
    const copy: number[] = [];
    const total: number[] = [];
    for (let i = 0; i < reps; i++) {
      const { r, ms, root } = await flash({ chunkBytes: chunk * MiB });
      copy.push(
        r.steps.filter((s) => s.id === "copy" || s.id === "connect").reduce((t, s) => t + (s.ms ?? 0), 0),
      );
      total.push(ms);
      if (chunk * MiB === DEFAULT_CHUNK_BYTES) stepsOfDefault = r.steps;
      await rm(root, { recursive: true });
    }
    if (chunk * MiB === DEFAULT_CHUNK_BYTES) fullDefault = mean(total);
    rows.push([
      `itera flash, ${chunk} MiB chunks${chunk * MiB === DEFAULT_CHUNK_BYTES ? " (default)" : ""}`,
      mean(total).toFixed(0),
      mean(copy).toFixed(0),
      (agentBytes / MiB / (mean(copy) / 1000)).toFixed(1),
      (mean(scpMs) / mean(copy)).toFixed(2),
    ]);
  }

  // Resume: cut the copy at half, then flash again and compare with a full flash.
  const resumed: { ms: number; sent: number; total: number }[] = [];
  for (let i = 0; i < reps; i++) {
    const root = join(work, `resume-${i}`);
    const abort = new AbortController();
    await flash(
      {
        signal: abort.signal,
        onProgress: (sent, all) => {
          if (sent > all / 2) abort.abort();
        },
      },
      root,
    ).catch(() => undefined);
    const { r, ms } = await flash({}, root);
    resumed.push({ ms, sent: r.copy!.bytes_sent, total: r.copy!.bytes_total });
    await rm(root, { recursive: true });
  }

  const lines = [
    "",
    `## Flash over ssh (bench/flash.ts)`,
    "",
    `Machine: ${cpus()[0]?.model.trim()} × ${cpus().length}, Node ${process.version}, load average ${load} at start (shared machine); sshd on loopback, ${reps} repetitions, bundle with a ${(agentBytes / MiB).toFixed(1)} MiB agent; ${new Date().toISOString().slice(0, 10)}.`,
    "",
    "Command: `npx esbuild bench/flash.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/flash.mjs && nice -n 10 node node_modules/.cache/itera-bench/flash.mjs --mb " +
      `${mb} --reps ${reps} --append docs/benchmarks.md\``,
    "",
    "Transfer (itera: the connect and copy steps; scp: the whole command, handshake included) and the whole flash (verify here, connect, probe, copy, sha256 on the device, install, switch, unit, health, cleanup); `vs scp` is scp time / itera transfer time (higher is faster):",
    "",
    markdownTable(["method", "whole flash ms", "transfer ms", "transfer MiB/s", "vs scp"], rows),
    "",
    `Steps of one flash with the default ${DEFAULT_CHUNK_BYTES / MiB} MiB chunks (ms):`,
    "",
    markdownTable(
      stepsOfDefault.map((s) => s.id),
      [stepsOfDefault.map((s) => (s.ms ?? 0).toFixed(0))],
    ),
    "",
    `Resume after the copy was cut at half: the second run sent ${((mean(resumed.map((x) => x.sent)) / mean(resumed.map((x) => x.total))) * 100).toFixed(0)} % of the bytes and took ${mean(resumed.map((x) => x.ms)).toFixed(0)} ms, ${(mean(resumed.map((x) => x.ms)) / fullDefault).toFixed(2)} × a full flash (${fullDefault.toFixed(0)} ms).`,
    "",
  ];
  process.stdout.write(lines.join("\n"));
  if (append) await appendFile(append, lines.join("\n"));
} finally {
  await sshd.stop();
  await rm(work, { recursive: true, force: true });
}
