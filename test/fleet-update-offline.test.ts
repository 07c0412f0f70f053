/**
 * `itera fleet update` with a device that is offline during the rollout (issue #19): real Mosquitto,
 * real agents in installed layouts under the supervisor loop (test/fleet-update-helpers.ts). The
 * rollout goes on for the others; the device gets the update if it comes back before the rollout's
 * end (--offline-wait after the last wave), and is reported OFFLINE, not updated, if it stays away.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FleetUpdateOutcome } from "../src/fleet/update.js";
import { InstalledFleet, launcher } from "./fleet-update-helpers.js";
import { until } from "./mqtt-helpers.js";

const FLEET = "away";
let f: InstalledFleet;

beforeAll(async () => {
  f = await InstalledFleet.create(FLEET, ["dev-a", "dev-b", "dev-c"]);
}, 120_000);

afterAll(async () => {
  await f?.close();
});

const stateOf = (device: string) =>
  (
    f.messages.filter((m) => m.topic === `itera/v1/${FLEET}/${device}/state`).at(-1)?.json as
      | { state: string }
      | undefined
  )?.state;

/** The update with the fleet's trusted key, a canary of `canary` devices and --offline-wait. */
const update = (bundle: string, offlineWaitS: number, canary: number, ...extra: string[]) =>
  f.update(
    bundle,
    "--trusted-key",
    f.pub,
    "--canary",
    String(canary),
    "--offline-wait",
    String(offlineWaitS),
    ...extra,
  );

describe("itera fleet update with a device offline during the rollout", () => {
  it("updates the others first, and the device when it comes back before the rollout ends", async () => {
    const b = await f.bundle("1.1.0", launcher("1.1.0"));
    await f.stop("dev-b");
    await until(() => stateOf("dev-b") === "offline", "dev-b offline", 30_000);
    const run = update(b, 90, 1);
    // dev-b comes back only once the others run the new release: the rollout did not wait for it.
    await until(
      () => f.version("dev-a") === "1.1.0" && f.version("dev-c") === "1.1.0",
      "dev-a and dev-c on 1.1.0 while dev-b is away",
      90_000,
    );
    expect(f.version("dev-b")).toBe("1.0.0");
    f.start("dev-b");
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/offline, sent after the last wave: dev-b/);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("updated");
    expect(out.canary).toEqual(["dev-a"]);
    for (const d of out.devices) {
      expect(d, JSON.stringify(d)).toMatchObject({ status: "SUCCEEDED", from: "1.0.0", running: "1.1.0" });
      expect(await f.release(d.device)).toBe("releases/1.1.0");
    }
    // dev-b was sent the job after the last wave (its wave came while it was away).
    const late = out.devices.find((d) => d.device === "dev-b")!;
    expect(late.wave).toBeGreaterThan(out.devices.find((d) => d.device === "dev-c")!.wave!);
    expect(f.version("dev-b")).toBe("1.1.0");
  }, 150_000);

  it("reports a device that stays away as not updated, with the reason, and exits 4", async () => {
    const b = await f.bundle("1.2.0", launcher("1.2.0"));
    await f.stop("dev-c");
    await until(() => stateOf("dev-c") === "offline", "dev-c offline", 30_000);
    const report = join(f.dir, "report-away");
    // Both online devices in the canary wave (shorter); dev-c, offline, is left for the end.
    const r = await update(b, 2, 2, "--out", report);
    expect(r.code, r.stderr).toBe(4);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("incomplete");
    expect(out.reason).toMatch(/not updated \(offline until the end\): dev-c/);
    expect(out.devices.map((d) => [d.device, d.status, d.running])).toEqual([
      ["dev-a", "SUCCEEDED", "1.2.0"],
      ["dev-b", "SUCCEEDED", "1.2.0"],
      ["dev-c", "OFFLINE", "1.1.0"],
    ]);
    const c = out.devices.find((d) => d.device === "dev-c")!;
    expect(c.details).toMatch(/not updated: offline since .* until the rollout ended \(--offline-wait 2 s\)/);
    expect(await readFile(join(report, "report.md"), "utf8")).toMatch(
      /\| dev-c \|.*\| OFFLINE \|.*not updated: offline/,
    );
    expect(await f.release("dev-c")).toBe("releases/1.1.0");
    // Back later, it finds the job queued for its session past its deadline: refused, nothing installed.
    f.start("dev-c");
    await until(() => stateOf("dev-c") === "online", "dev-c back online", 30_000);
    const resultTopic = `itera/v1/${FLEET}/dev-c/jobs/${out.jobId}/result`;
    await until(() => f.messages.some((m) => m.topic === resultTopic), "dev-c answers the stale job", 30_000);
    expect((f.messages.find((m) => m.topic === resultTopic)!.json as { status: string }).status).toBe(
      "TIMED_OUT",
    );
    expect(await f.release("dev-c")).toBe("releases/1.1.0");
    expect(f.version("dev-c")).toBe("1.1.0");
  }, 150_000);
});
