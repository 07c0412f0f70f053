import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { runInNewContext } from "node:vm";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { STEP_DECODE_MAX_TOKENS } from "../src/cli/generation.js";
import { asciiScript, v8HeapFlags } from "../src/package/sea.js";

/**
 * What the agent does to start small (issue #18, docs/packaging.md "Memory and start-up"); the
 * executable itself (the loader, its code cache, --version without the agent script) is tested
 * with real bundles in test/package-x64.test.ts and test/package-cross.test.ts.
 */
const run = promisify(execFile);
const AGENT = resolve("dist/cli/itera-agent.js");

describe("the agent script as the loader reads it", () => {
  it("is ASCII and means the same: a non-ASCII regular expression, string and astral character", () => {
    const source = 'const r = /[+-]([^°]*)/; ["+12°C".match(r)[1], "héllo", "a😀b".length]';
    const ascii = asciiScript(source);
    expect(Buffer.from(ascii).every((b) => b < 0x80)).toBe(true);
    expect(ascii).not.toBe(source);
    expect(runInNewContext(ascii)).toEqual(runInNewContext(source));
    expect(runInNewContext(ascii)).toEqual(["12", "héllo", 4]);
  });
});

describe("V8 options from the profile's memory", () => {
  it("caps the semi-spaces everywhere, the old space and the compilers only on small devices", () => {
    expect(v8HeapFlags(16384)).toEqual(["--max-semi-space-size=1"]);
    expect(v8HeapFlags(512)).toEqual(["--max-old-space-size=128", "--max-semi-space-size=1", "--lite-mode"]);
    expect(v8HeapFlags(2048)).toContain("--max-old-space-size=512");
  });
});

describe("itera-agent run: short runs build no decode loop", () => {
  const agentRun = async (maxTokens: number) => {
    const args = [AGENT, "run", "--model", "models/itera-lite-micro", "--profile", "desktop-x64-12c"];
    args.push("--prompt", "ROMEO:", "--max-tokens", String(maxTokens), "--threads", "1", "--json");
    return JSON.parse((await run(process.execPath, args)).stdout) as { ids: number[]; decode: string };
  };

  it("decodes step by step up to the limit and fused past it, the same greedy tokens", async () => {
    const short = await agentRun(STEP_DECODE_MAX_TOKENS);
    const long = await agentRun(STEP_DECODE_MAX_TOKENS + 1);
    expect(short.decode).toBe("step");
    expect(long.decode).toBe("fused");
    expect(long.ids.slice(0, short.ids.length)).toEqual(short.ids);
    expect(short.ids.length).toBeGreaterThan(16);
  }, 120_000);
});
