import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Agent } from "../src/agent/agent.js";
import { type EmbeddedBroker, startBroker } from "../src/fleet/broker.js";
import { runFleetBench } from "../src/fleet/bench.js";
import { FleetStore } from "../src/fleet/store.js";
import { IteraError } from "../src/errors.js";
import { testAgentOptions, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

let broker: EmbeddedBroker;
beforeAll(async () => {
  broker = await startBroker({ port: 0, host: "127.0.0.1" });
});
afterAll(async () => {
  await broker.close();
});

describe("the embedded aedes broker (itera broker)", () => {
  it("agents fall back to MQTT 3.1.1, announce themselves, run a fleet benchmark, and leave a Last Will", async () => {
    const agents: Agent[] = [];
    for (const [i, p] of ["rpi4", "rpi5"].entries()) {
      const a = new Agent(testAgentOptions(broker.url, "emb", `e-${i}`, p, await tempDir("itera-agent-")));
      a.start();
      await a.connected;
      agents.push(a);
    }
    expect(agents[0]!.client!.options.protocolVersion).toBe(4);
    const store = new FleetStore(":memory:");
    const outcome = await runFleetBench({
      broker: { url: broker.url },
      fleet: "emb",
      devices: 2,
      params: { model: "tiny", tests: ["tg8"], threads: [1], repetitions: 1, warmup: 0 },
      timeoutS: 60,
      store,
    });
    expect(outcome.devices.map((d) => d.status)).toEqual(["SUCCEEDED", "SUCCEEDED"]);

    const watcher = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
    const states: Array<{ state: string; bdSeq: number }> = [];
    watcher.on("message", (_t, p) =>
      states.push(JSON.parse(p.toString()) as { state: string; bdSeq: number }),
    );
    await watcher.subscribeAsync("itera/v1/emb/e-0/state", { qos: 1 });
    const bd = agents[0]!.bdSeq;
    agents[0]!.crash();
    await until(() => states.some((s) => s.state === "lost"), "Last Will");
    expect(states.find((s) => s.state === "lost")!.bdSeq).toBe(bd);
    await agents[1]!.stop();
    watcher.end(true);
    store.close();
  });

  it("refuses a second broker on a port in use with one clear error", async () => {
    const err = await startBroker({ port: broker.port, host: "127.0.0.1" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IteraError);
    expect((err as IteraError).fix).toMatch(/another --port/);
  });
});
