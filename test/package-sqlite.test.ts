import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { build } from "esbuild";
import { beforeAll, describe, expect, it } from "vitest";
import { nativeAddons } from "../src/package/agent-script.js";
import { hostNodeBinary } from "../src/package/node-binary.js";
import { run } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * Inside a bundle better-sqlite3 (built for the host only) is replaced by an adapter over Node 24's
 * built-in node:sqlite. The agent's real state store (src/agent/store.ts) is bundled exactly as the
 * agent script is, with the same plugin, and run by the bundles' Node 24.
 */
let script: string;
let node: string;
let work: string;

beforeAll(async () => {
  work = await tempDir("itera-pkg-sqlite-");
  const entry = join(work, "entry.ts");
  await writeFile(
    entry,
    `import { AgentStore } from ${JSON.stringify(resolve("src/agent/store.ts"))};
const store = new AgentStore(process.argv[2]);
const out = { bdSeq: store.next("bdSeq"), seq: [store.next("seq"), store.next("seq")] };
store.enqueue("itera/v1/f/d/telemetry", '{"n":1}');
const id2 = store.enqueue("itera/v1/f/d/telemetry", '{"n":2}', 0);
store.acknowledge(id2);
let rolledBack = false;
try {
  store.transaction(() => { store.enqueue("t", "lost"); throw new Error("abort"); });
} catch { rolledBack = true; }
store.putJob({ jobId: "j1", execNo: 1, status: "IN_PROGRESS", details: null, request: null, result: null });
console.log(JSON.stringify({ ...out, pending: store.pending(), size: store.outboxSize(), rolledBack,
  job: store.getJob("j1", 1), unfinished: store.unfinishedJobs().length, journal: process.versions.node,
  reset: store.resetNow ?? null }));
store.close();
`,
  );
  script = join(work, "store.cjs");
  await build({
    entryPoints: [entry],
    outfile: script,
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node24",
    logLevel: "silent",
    plugins: [nativeAddons],
  });
  node = await hostNodeBinary();
});

describe("better-sqlite3 on node:sqlite in bundles", () => {
  it("keeps the agent's counters, outbox and jobs, rolls back a failed transaction, and persists", async () => {
    const state = join(work, "state");
    const first = JSON.parse((await run(node, [script, state])).stdout);
    expect(first.journal).toBe("24.21.0");
    expect(first.bdSeq).toBe(0);
    expect(first.seq).toEqual([0, 1]);
    expect(first.pending.map((r: { payload: string; qos: number }) => [r.payload, r.qos])).toEqual([
      ['{"n":1}', 1],
    ]);
    expect(first.size).toBe(1);
    expect(first.rolledBack).toBe(true);
    expect(first.job).toMatchObject({ jobId: "j1", execNo: 1, status: "IN_PROGRESS" });
    expect(first.unfinished).toBe(1);
    // A second process continues from what the first one stored.
    const second = JSON.parse((await run(node, [script, state])).stdout);
    expect(second.bdSeq).toBe(1);
    expect(second.seq).toEqual([2, 3]);
    expect(second.size).toBe(2);
    expect(second.reset).toBe(null);
  });

  it("keeps a corrupt agent.db aside and starts a fresh store (node:sqlite's error codes)", async () => {
    const state = join(work, "corrupt");
    await mkdir(state);
    const garbage = randomBytes(16 * 1024);
    await writeFile(join(state, "agent.db"), garbage);
    const out = JSON.parse((await run(node, [script, state])).stdout);
    expect(out.reset.reason).toMatch(/not a database/);
    expect(out.reset.kept_as).toMatch(/agent\.db\.corrupt-/);
    expect((await readFile(out.reset.kept_as)).equals(garbage)).toBe(true);
    expect(out.bdSeq).toBe(0);
    expect(out.size).toBe(1);
  });
});
