import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { registerRun as registerAgentRun } from "../src/cli/agent-commands/run.js";
import { registerRun } from "../src/cli/commands/run.js";
import { loadModel } from "../src/runtime/index.js";
import { inProcessCli } from "./cli-helpers.js";

/**
 * `itera run` and `itera-agent run` decode the same way by default (greedy, the model's max length)
 * and close with the same summary line (src/cli/generation.ts).
 */
const cli = inProcessCli((program) => {
  registerRun(program);
  registerAgentRun(program.command("agent-cli"));
});

const micro = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const prompt = "ROMEO:\nWhat";
const summary =
  /^\[(\d+) tokens, stop: (eos|max_tokens|stop|context), ttft \d+\.\d ms, [\d.]+ tokens\/s \((fused|step) decode\), greedy, 1 thread\]\n$/;

describe.skipIf(!existsSync(join(micro, "model.onnx")))("itera run and itera-agent run, defaults", () => {
  it("give the same tokens for the same model and prompt: the greedy ones", async () => {
    const host = await cli("run", micro, "-p", prompt, "--json");
    const agent = await cli(
      "agent-cli",
      "run",
      "--model",
      micro,
      "--profile",
      "rpi4",
      "--prompt",
      prompt,
      "--json",
    );
    expect(host.code, host.stderr).toBe(0);
    expect(agent.code, agent.stderr).toBe(0);
    const a = JSON.parse(host.stdout) as { ids: number[]; stop_reason: string };
    const b = JSON.parse(agent.stdout) as { ids: number[]; stop_reason: string };
    expect(b.ids).toEqual(a.ids);
    expect(b.stop_reason).toBe(a.stop_reason);
    // Greedy (not the card's temperature 0.8), to the model's own length limit.
    const model = await loadModel(micro, { threads: 1 });
    try {
      const greedy = await model.generate(prompt, { temperature: 0 });
      expect(a.ids).toEqual(greedy.ids);
      expect(a.ids.length).toBeGreaterThan(64); // not itera-agent run's former default of 64
    } finally {
      await model.dispose();
    }
    // Greedy is reproducible: a second run gives the same tokens.
    expect(JSON.parse((await cli("run", micro, "-p", prompt, "--json")).stdout).ids).toEqual(a.ids);
  });

  it("both stream the same text and print the same summary line", async () => {
    const host = await cli("run", micro, "-p", prompt, "-n", "40");
    const agent = await cli(
      "agent-cli",
      "run",
      "--model",
      micro,
      "--profile",
      "rpi4",
      "--prompt",
      prompt,
      "--max-tokens",
      "40",
    );
    expect(host.code).toBe(0);
    expect(agent.code).toBe(0);
    expect(agent.stdout).toBe(host.stdout);
    const h = summary.exec(host.stderr);
    const g = summary.exec(agent.stderr);
    expect(h, host.stderr).not.toBeNull();
    expect(g, agent.stderr).not.toBeNull();
    expect([g![1], g![2], g![3]]).toEqual([h![1], h![2], h![3]]);
  });

  it("--temperature samples on both, and the summary says so", async () => {
    const args = ["--temperature", "0.8", "--seed", "7"];
    const host = await cli("run", micro, "-p", prompt, "-n", "40", ...args);
    const agent = await cli(
      "agent-cli",
      "run",
      "--model",
      micro,
      "--profile",
      "rpi4",
      "--prompt",
      prompt,
      "--max-tokens",
      "40",
      ...args,
    );
    expect(agent.stdout).toBe(host.stdout);
    expect(host.stderr).toMatch(/ decode\), sampled at temperature 0\.8, seed 7, 1 thread\]\n$/);
    expect(agent.stderr).toMatch(/ decode\), sampled at temperature 0\.8, seed 7, 1 thread\]\n$/);
  });
});
