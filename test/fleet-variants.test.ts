/**
 * A/B variants (issues #19, #20 part 4): `itera fleet update --variant B --split 67%` on a real
 * Mosquitto with real agents in installed layouts (test/fleet-update-helpers.ts); the devices that
 * got it announce it, `itera fleet bench`'s report, the stored telemetry and `itera fleet feedback`
 * show the variants side by side.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FleetUpdateOutcome } from "../src/fleet/update.js";
import { compareRates, splitDevices, wilson } from "../src/fleet/variants.js";
import { PROTOCOL_VERSION } from "../src/protocol/schemas.js";
import { InstalledFleet, itera, launcher } from "./fleet-update-helpers.js";
import { until } from "./mqtt-helpers.js";

const FLEET = "ab";
const DEVICES = ["dev-a", "dev-b", "dev-c"];
const B = splitDevices(DEVICES, "B", 67);
const KEPT = DEVICES.filter((d) => !B.includes(d));
let f: InstalledFleet;
/** A Markdown table row that begins with these cells (regex sources), whatever the padding. */
const tableRow = (...cells: string[]) =>
  new RegExp(`^\\|${cells.map((c) => ` *${c} *`).join("\\|")}\\|`, "m");
let watch: ChildProcess;
let db: string;
/** What `fleet watch --json` printed so far. */
let watched = "";

beforeAll(async () => {
  f = await InstalledFleet.create(FLEET, DEVICES, 2);
  db = join(f.dir, "fleet.db");
  // The feedback collector (and telemetry store) of the fleet, running through the whole test.
  watch = spawn(
    process.execPath,
    [
      resolve("dist/cli/itera.js"),
      "fleet",
      "watch",
      "--broker",
      f.broker.url,
      "--fleet",
      FLEET,
      "--db",
      db,
      "--client-id",
      "ab-watch",
      "--json",
      "--duration",
      "300",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  watch.stdout!.on("data", (d: Buffer) => {
    watched += d.toString();
  });
  await until(
    () => DEVICES.every((d) => watched.includes(`"${d}"`)),
    "fleet watch sees every device",
    30_000,
  );
}, 120_000);

afterAll(async () => {
  watch?.kill("SIGTERM");
  await f?.close();
});

/** Variant B on 67 % of the fleet (two of three), both in one canary wave (shorter). */
const update = (bundle: string) =>
  f.update(bundle, "--trusted-key", f.pub, "--variant", "B", "--split", "67%", "--canary", "2");

describe("A/B variants over a real Mosquitto", () => {
  it("the split is deterministic by device id and variant, and Wilson intervals say when rates differ", () => {
    expect(B).toHaveLength(2);
    expect(splitDevices([...DEVICES].reverse(), "B", 67)).toEqual(B);
    expect(splitDevices(DEVICES, "B", 1)).toHaveLength(1);
    const ci = wilson(35, 40)!;
    expect(ci.low).toBeGreaterThan(0.72);
    expect(ci.high).toBeLessThan(0.96);
    expect(wilson(0, 0)).toBeNull();
    expect(
      compareRates([
        { label: "B", positive: 5, rated: 6 },
        { label: "A", positive: 1, rated: 6 },
      ]),
    ).toMatch(/too few ratings to compare \(B: 6, A: 6/);
    expect(
      compareRates([
        { label: "B", positive: 20, rated: 40 },
        { label: "A", positive: 18, rated: 40 },
      ]),
    ).toMatch(/overlap: the difference may be chance/);
  });

  let generatedBefore = 0;

  it("installs the variant on the split devices only; they announce it, and a rerun picks the same ones", async () => {
    generatedBefore = Date.now();
    const bundle = await f.bundle("1.1.0", launcher("1.1.0"));
    const r = await update(bundle);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out).toMatchObject({ result: "updated", variant: "B", splitPercent: 67, kept: KEPT });
    for (const d of out.devices) {
      if (B.includes(d.device)) {
        expect(d, JSON.stringify(d)).toMatchObject({ status: "SUCCEEDED", running: "1.1.0", variant: "B" });
        expect(f.births.get(d.device)?.variant).toBe("B");
        expect(
          (await readFile(join(f.roots.get(d.device)!, "opt/itera/variants/1.1.0"), "utf8")).trim(),
        ).toBe("B");
      } else {
        expect(d).toMatchObject({ status: "SKIPPED", running: "1.0.0", variant: null });
        expect(d.details).toMatch(/not in --split 67%: keeps its release \(1\.0\.0\)/);
        expect(f.births.get(d.device)?.variant).toBeUndefined();
        expect(await f.release(d.device)).toBe("releases/1.0.0");
      }
    }
    // Telemetry names the variant too.
    await until(
      () =>
        B.every((d) =>
          f.messages.some(
            (m) =>
              m.topic === `itera/v1/${FLEET}/${d}/telemetry` &&
              (m.json as { variant?: string }).variant === "B",
          ),
        ),
      "telemetry with variant B",
      20_000,
    );
    const again = JSON.parse((await update(bundle)).stdout) as FleetUpdateOutcome;
    expect(again.kept).toEqual(KEPT);
    expect(again.devices.filter((d) => d.status === "SUCCEEDED").map((d) => d.device)).toEqual(B);
  }, 150_000);

  it("fleet bench and the stored telemetry show the variants side by side", async () => {
    const out = join(f.dir, "bench-report");
    const r = await itera([
      "fleet",
      "bench",
      "--broker",
      f.broker.url,
      "--fleet",
      FLEET,
      "--devices",
      "3",
      "--model",
      "itera-lite-micro",
      "--tests",
      "pp8,tg8",
      "--threads",
      "1",
      "--repetitions",
      "1",
      "--warmup",
      "0",
      "--min-duration",
      "0",
      "--timeout",
      "120",
      "--db",
      db,
      "--out",
      out,
      "--json",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(await readFile(join(out, "report.json"), "utf8")) as {
      variants: Array<{ variant: string; devices: number; succeeded: number; tg_tok_s: number | null }>;
      rows: Array<{ device: string; variant: string }>;
    };
    expect(report.variants.map((v) => [v.variant, v.devices, v.succeeded])).toEqual([
      ["B", 2, 2],
      ["release 1.0.0", 1, 1],
    ]);
    for (const v of report.variants) expect(v.tg_tok_s).toBeGreaterThan(0);
    for (const row of report.rows) expect(row.variant).toBe(B.includes(row.device) ? "B" : "release 1.0.0");
    const md = await readFile(join(out, "report.md"), "utf8");
    expect(md).toMatch(/## Per variant/);
    expect(md).toMatch(tableRow("B", "2", "2"));
    expect(md).toMatch(tableRow("release 1\\.0\\.0", "1", "1"));
    expect(await readFile(join(out, "report.html"), "utf8")).toMatch(
      /<h2>Per variant<\/h2>[\s\S]*id="variants"/,
    );

    const t = await itera([
      "fleet",
      "history",
      "--db",
      db,
      "--fleet",
      FLEET,
      "--telemetry",
      "--by-variant",
      "--json",
    ]);
    expect(t.code, t.stderr).toBe(0);
    const byVariant = JSON.parse(t.stdout) as Array<{
      variant: string | null;
      devices: number;
      messages: number;
    }>;
    const b = byVariant.find((v) => v.variant === "B");
    const kept = byVariant.find((v) => v.variant === "release 1.0.0");
    expect(b?.devices).toBe(2);
    // Each message counts for what its device ran then: all three ran release 1.0.0 before the update.
    expect(kept?.devices).toBe(3);
    expect(b!.messages).toBeGreaterThan(0);
  }, 150_000);

  it("counts each rating for the variant its device ran when it generated, and compares the rates", async () => {
    const rate = (device: string, n: number, rating: number, generated_ts: number) => {
      for (let i = 0; i < n; i++) {
        f.observerClient.publish(
          `itera/v1/${FLEET}/${device}/feedback`,
          JSON.stringify({
            v: PROTOCOL_VERSION,
            ts: Date.now(),
            requestId: `gen-${device}-${rating}-${generated_ts}-${i}`,
            rating,
            comment: "",
            model: { id: "itera-lite-micro", sha256: "a".repeat(64), quant: "int8" },
            prompt: "ROMEO:",
            text: "text",
            correction: null,
            generated_ts,
          }),
          { qos: 1 },
        );
      }
    };
    const now = Date.now();
    // The B devices: 36 of 40 positive now; 3 ratings of generations made before they were updated.
    rate(B[0]!, 18, 1, now);
    rate(B[1]!, 18, 1, now);
    rate(B[0]!, 2, -1, now);
    rate(B[1]!, 2, -1, now);
    rate(B[0]!, 3, -1, generatedBefore - 1);
    // The kept device (release 1.0.0): 10 of 40 positive.
    rate(KEPT[0]!, 10, 1, now);
    rate(KEPT[0]!, 30, -1, now);
    const feedback = async (...args: string[]) => {
      const r = await itera(["fleet", "feedback", "--db", db, "--fleet", FLEET, "--json", ...args]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as {
        variants: Array<{
          variant: string;
          ratings: number;
          positive: number;
          negative: number;
          devices: number;
        }>;
        comparison: string;
        feedback: Array<{ variant: string | null }>;
      };
    };
    await until(
      () => (watched.match(/"type":"feedback".*"stored":true/g) ?? []).length >= 83,
      "fleet watch stores the 83 ratings",
      30_000,
    );
    const all = await feedback();
    expect(all.variants.map((v) => [v.variant, v.devices, v.ratings, v.positive, v.negative])).toEqual([
      ["B", 2, 40, 36, 4],
      ["release 1.0.0", 2, 43, 10, 33],
    ]);
    expect(all.comparison).toMatch(/^B has the highest positive rate; its 95 % interval does not overlap/);
    const onlyB = await feedback("--variant", "B");
    expect(onlyB.feedback).toHaveLength(40);
    expect(onlyB.variants.map((v) => v.variant)).toEqual(["B"]);
    // The benchmark's report rendered again has the feedback rates beside tokens/s and mJ/token.
    const again = join(f.dir, "report-again");
    const rep = await itera(["fleet", "report", "--db", db, "--out", again, "--json"]);
    expect(rep.code, rep.stderr).toBe(0);
    const report = JSON.parse(await readFile(join(again, "report.json"), "utf8")) as {
      variants: Array<{
        variant: string;
        feedback_rated: number | null;
        feedback_positive_rate: number | null;
      }>;
    };
    expect(report.variants.map((v) => [v.variant, v.feedback_rated, v.feedback_positive_rate])).toEqual([
      ["B", 40, 0.9],
      ["release 1.0.0", 43, 10 / 43],
    ]);
    const text = await itera(["fleet", "feedback", "--db", db, "--fleet", FLEET]);
    expect(text.stdout).toMatch(tableRow("B", "2", "40", "36", "4", "90\\.0 %", "76\\.9 % – 96\\.0 %"));
  }, 60_000);
});
