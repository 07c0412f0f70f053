/** The fleet store reads databases written before jobs had types (issue #19): they are migrated. */
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { FleetStore } from "../src/fleet/store.js";
import { tempDir } from "./temp-dir.js";

describe("fleet store migration", () => {
  it("opens a database of the benchmark-only schema: its runs are benchmarks, and updates can be added", async () => {
    const dir = await tempDir("itera-store-migrate-");
    const path = join(dir, "fleet.db");
    // The schema as it was before job types (runs without `type`).
    const old = new Database(path);
    old.exec(`
      CREATE TABLE runs (
        job_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, model TEXT NOT NULL, params TEXT NOT NULL,
        started_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, finished_ms INTEGER, summary TEXT);
      CREATE TABLE executions (
        job_id TEXT NOT NULL, fleet TEXT NOT NULL, device TEXT NOT NULL, exec_no INTEGER NOT NULL,
        status TEXT NOT NULL, details TEXT, updated_ms INTEGER NOT NULL, PRIMARY KEY (job_id, device, exec_no));
    `);
    old
      .prepare("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
      .run("bench-old", "lab", "tiny", "{}", 1, 2, 3, JSON.stringify({ jobId: "bench-old", devices: [] }));
    old.close();

    const store = new FleetStore(path);
    try {
      expect(store.runs().map((r) => [r.jobId, r.type])).toEqual([["bench-old", "benchmark"]]);
      expect(store.lastRunId()).toBe("bench-old");
      expect(store.outcome("bench-old")?.jobId).toBe("bench-old");
      store.addRun({
        jobId: "update-1",
        type: "update",
        fleet: "lab",
        model: "tiny",
        params: {},
        startedMs: 5,
        deadlineMs: 6,
      });
      store.finishJob("update-1", 7, { result: "updated" });
      const r = {
        device: "d",
        from: "1",
        to: "2",
        running: "2",
        rolled_back: false,
        bytes: 9,
        chunks_refused: 0,
        reason: null,
      };
      expect(store.addUpdateResult("update-1", "lab", "d", 1, r)).toBe(true);
      expect(store.addUpdateResult("update-1", "lab", "d", 1, r)).toBe(false);
      expect(store.updateResults({ jobId: "update-1" }).map((x) => x.result)).toEqual([r]);
      // An update is not a benchmark outcome, and `fleet report` keeps rendering the latest benchmark.
      expect(store.outcome("update-1")).toBeUndefined();
      expect(store.lastRunId()).toBe("bench-old");
      expect(store.lastRunId("update")).toBe("update-1");
    } finally {
      store.close();
    }
  });
});
