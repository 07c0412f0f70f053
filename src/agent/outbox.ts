import type { MqttClient } from "mqtt";
import type { AgentStore } from "./store.js";

/**
 * Store-and-forward publishing: every message is written to the on-disk outbox first and removed
 * only when the broker acknowledges it (PUBACK). While the broker is away messages accumulate on
 * disk; on every (re)connect, and after an agent restart, the backlog is sent in order.
 * Messages already handed to the MQTT client stay with it (it re-sends them itself after a
 * reconnect), so each is in flight at most once per process.
 */
export class Outbox {
  private client: MqttClient | undefined;
  private readonly inFlight = new Set<number>();
  private flushing = false;
  private detached = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly store: AgentStore) {}

  attach(client: MqttClient): void {
    this.client = client;
    client.on("connect", () => this.flush());
    if (client.connected) this.flush();
  }

  /** Stop touching the store (it is about to close); unacknowledged messages stay on disk. */
  detach(): void {
    this.detached = true;
  }

  publish(topic: string, payload: object): void {
    this.store.enqueue(topic, JSON.stringify(payload), 1);
    this.flush();
  }

  size(): number {
    return this.store.outboxSize();
  }

  /** Resolves when the outbox is empty (everything acknowledged). */
  drained(): Promise<void> {
    if (this.store.outboxSize() === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  flush(): void {
    const client = this.client;
    if (!client?.connected || this.flushing || this.detached) return;
    this.flushing = true;
    try {
      for (const row of this.store.pending(Number.MAX_SAFE_INTEGER)) {
        if (this.inFlight.has(row.id)) continue;
        this.inFlight.add(row.id);
        client.publish(row.topic, row.payload, { qos: row.qos }, (err) => {
          this.inFlight.delete(row.id);
          if (err || this.detached) return; // stays in the outbox; the next connect sends it again
          this.store.acknowledge(row.id);
          if (this.inFlight.size === 0 && this.store.outboxSize() === 0) {
            for (const w of this.idleWaiters.splice(0)) w();
          }
        });
      }
    } finally {
      this.flushing = false;
    }
  }
}
