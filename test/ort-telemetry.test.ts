import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

/**
 * ONNX Runtime 1.30's official builds keep a telemetry queue under ~/.cache/Microsoft; itera turns
 * it off (src/runtime/ort-telemetry.ts) unless the user chose otherwise. Each run is a fresh process
 * with its own HOME: ONNX Runtime reads the setting once per process. ONNX Runtime also stays silent
 * on its own when it sees a CI service (CI, GITHUB_ACTIONS, ... as listed in its library) and moves
 * the queue with XDG_CACHE_HOME, so the child runs without those: otherwise, on a CI machine, the
 * control below could not tell itera's switch from ONNX Runtime's.
 */
const ORT_SILENCING_ENV = [
  "CI",
  "TF_BUILD",
  "GITHUB_ACTIONS",
  "GITLAB_CI",
  "CIRCLECI",
  "TRAVIS",
  "JENKINS_URL",
  "CODEBUILD_BUILD_ID",
  "BUILDKITE",
  "TEAMCITY_VERSION",
  "APPVEYOR",
  "BITBUCKET_BUILD_NUMBER",
  "XDG_CACHE_HOME",
  "ORT_DISABLE_TELEMETRY",
];
const homes: string[] = [];
afterAll(() => {
  for (const h of homes) rmSync(h, { recursive: true, force: true });
});

function runWithHome(env: Record<string, string>): string {
  const home = mkdtempSync(join(tmpdir(), "itera-ort-home-"));
  homes.push(home);
  const rest = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !ORT_SILENCING_ENV.includes(name)),
  );
  const r = spawnSync(
    process.execPath,
    ["dist/cli/itera.js", "run", "models/itera-lite-micro", "--prompt", "ROMEO:", "-n", "2"],
    { env: { ...rest, HOME: home, ...env }, encoding: "utf8" },
  );
  expect(r.status, r.stderr).toBe(0);
  return home;
}

describe("ONNX Runtime telemetry", () => {
  it("is off by default: nothing is written under ~/.cache/Microsoft", () => {
    expect(existsSync(join(runWithHome({}), ".cache", "Microsoft"))).toBe(false);
  });

  it("stays the user's choice: ORT_DISABLE_TELEMETRY=0 lets ONNX Runtime keep its queue", () => {
    expect(existsSync(join(runWithHome({ ORT_DISABLE_TELEMETRY: "0" }), ".cache", "Microsoft"))).toBe(true);
  });
});
