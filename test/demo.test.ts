import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "./temp-dir.js";

/**
 * `make demo` (tools/demo.sh) run once, end to end, into a temp folder (ITERA_DEMO_OUT) instead of the
 * repository's demo-output/: it keeps its results, builds and runs a bundle, and says of every energy
 * figure of its simulated devices that it is simulated.
 */
const ROOT = resolve(import.meta.dirname, "..");
const REPORT_FILES = ["report.md", "report.csv", "report.json", "results.json", "chart.svg"];
/** "ina219" as a claim of a real chip: not part of ina219-simulated or tools/ina219-sim. */
const PLAIN_INA219 = /ina219(?!-sim)/;
/** The real INA219's accuracy text (src/power/ina219/meter.ts): never beside simulated figures. */
const REAL_ACCURACY = /±0\.5% gain error/;

let out: string;
let demo: { code: number | null; stdout: string; stderr: string };

beforeAll(async () => {
  out = await tempDir("itera-demo-");
  demo = await new Promise((done) => {
    const p = spawn("bash", [join(ROOT, "tools", "demo.sh")], {
      cwd: tmpdir(), // the script finds the repository by itself
      env: { ...process.env, ITERA_DEMO_OUT: out },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    p.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    // Stopped before the hook's own limit, so that its trap stops the broker and agents it started.
    const limit = setTimeout(() => p.kill("SIGTERM"), 840_000);
    p.on("exit", (code) => {
      clearTimeout(limit);
      // Output still in the pipes is read by "close"; a process left holding them must not hang the test.
      const late = setTimeout(() => done({ code, stdout, stderr }), 5000);
      p.on("close", () => {
        clearTimeout(late);
        done({ code, stdout, stderr });
      });
    });
  });
}, 900_000);

describe("make demo", () => {
  it("finishes and keeps its results in its folder, and says where", () => {
    expect(demo.stderr).not.toMatch(/internal error/);
    expect(demo.code, demo.stderr.slice(-2000)).toBe(0);
    for (const f of REPORT_FILES) expect(existsSync(join(out, "report", f)), f).toBe(true);
    expect(existsSync(join(out, "fleet.db"))).toBe(true);
    expect(demo.stdout).toContain(`the demo's results are in ${out}`);
  });

  it("labels every energy figure of its simulated devices ina219-simulated, in every file", async () => {
    const md = await readFile(join(out, "report", "report.md"), "utf8");
    const tableRows = md.split("\n").filter((l) => /^\| sim-/.test(l));
    expect(tableRows).toHaveLength(3);
    for (const row of tableRows) expect(row).toMatch(/\| ina219-simulated \|/);
    expect(md).toMatch(/simulated energy: ina219-simulated figures were read from a simulated meter/);

    const csv = (await readFile(join(out, "report", "report.csv"), "utf8")).trim().split("\n");
    const method = csv[0]!.split(",").indexOf("method");
    expect(method).toBeGreaterThan(0);
    expect(csv.slice(1).map((l) => l.split(",")[method])).toEqual(Array(3).fill("ina219-simulated"));

    const report = JSON.parse(await readFile(join(out, "report", "report.json"), "utf8")) as {
      rows: Array<{ energy_method: string }>;
      devices: Array<{
        results: Array<{ energy: { method: string; simulated: boolean; uncertainty: string } }>;
      }>;
    };
    expect(report.rows.map((r) => r.energy_method)).toEqual(Array(3).fill("ina219-simulated"));
    const energies = report.devices.flatMap((d) => d.results.map((r) => r.energy));
    expect(energies.length).toBeGreaterThanOrEqual(6); // pp32 and tg32 on each of 3 devices
    for (const e of energies) {
      expect(e).toMatchObject({ method: "ina219-simulated", simulated: true });
      expect(e.uncertainty).toMatch(/^SIMULATED meter/);
    }
    const results = JSON.parse(await readFile(join(out, "report", "results.json"), "utf8")) as Array<{
      energy: { method: string };
    }>;
    expect(results.map((r) => r.energy.method)).toEqual(Array(energies.length).fill("ina219-simulated"));

    const svg = await readFile(join(out, "report", "chart.svg"), "utf8");
    expect(svg.match(/\(ina219-simulated\)<\/text>/g)).toHaveLength(3); // one per mJ/token bar
    expect(svg).toMatch(/simulated energy: ina219-simulated figures/);

    for (const f of REPORT_FILES) {
      const text = await readFile(join(out, "report", f), "utf8");
      expect(text, f).not.toMatch(PLAIN_INA219);
      expect(text, f).not.toMatch(REAL_ACCURACY);
    }
  });

  it("stores ina219-simulated in every SQLite row that has a method", () => {
    const db = new Database(join(out, "fleet.db"), { readonly: true });
    try {
      const results = db.prepare("SELECT result FROM results").all() as Array<{ result: string }>;
      expect(results.length).toBeGreaterThanOrEqual(6);
      for (const r of results) {
        const energy = (JSON.parse(r.result) as { energy: { method: string; uncertainty: string } }).energy;
        expect(energy.method).toBe("ina219-simulated");
        expect(energy.uncertainty).not.toMatch(REAL_ACCURACY);
      }
      const methods = db.prepare("SELECT DISTINCT method FROM telemetry WHERE method IS NOT NULL").all();
      // Telemetry after the benchmark (the demo watches it) carries the recent mJ/token with its method.
      expect(methods).toEqual([{ method: "ina219-simulated" }]);
    } finally {
      db.close();
    }
  });

  it("prints follow-up commands that work on its database", () => {
    const commands = demo.stdout
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => / fleet (report|history) --db /.test(l));
    expect(commands).toHaveLength(3);
    expect(commands[0]).toMatch(/ fleet report --db /);
    for (const command of commands) {
      const r = spawnSync("bash", ["-c", command], { cwd: tmpdir(), encoding: "utf8", timeout: 60_000 });
      expect(r.status, `${command}\n${r.stderr}`).toBe(0);
      expect(r.stdout, command).toMatch(/ina219-simulated/);
      expect(r.stdout, command).not.toMatch(PLAIN_INA219);
      if (command === commands[0]) expect(r.stdout).toMatch(/3\/3 devices succeeded/);
    }
  });

  it("built a bundle for this host and its executable generated tokens", async () => {
    const bundles = readdirSync(join(out, "bundles"));
    const dir = bundles.find((b) => b.startsWith("itera-lite-micro-") && !b.endsWith(".tar.gz"));
    expect(dir).toBeDefined();
    expect(bundles).toContain(`${dir}.tar.gz`);
    expect(existsSync(join(out, "bundles", dir!, "itera-agent"))).toBe(true);
    // The streamed text, then the summary line (on stderr) with the count of generated tokens.
    const lines = (await readFile(join(out, "bundle-run.txt"), "utf8")).trim().split("\n");
    const summary = lines.at(-1)!.match(/(\d+) tokens/);
    expect(summary, lines.join("\n")).not.toBeNull();
    expect(Number(summary![1])).toBeGreaterThan(0);
    expect(lines.slice(0, -1).join("").trim().length).toBeGreaterThan(0);
  });
});
