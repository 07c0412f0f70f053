import { z } from "zod";
import { IteraError } from "../errors.js";

/**
 * The device's own settings for the agent, written by `itera flash` to etc/itera/agent.json:
 * which fleet it belongs to, the MQTT broker, and its device id (the {device} of DESIGN.md §8 topics).
 * They belong to the device, not to a release, so a rollback keeps them.
 */
const topicSegment = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_.-]+$/, "letters, digits, '.', '_' or '-' only (it becomes an MQTT topic segment)");

export const agentConfigSchema = z
  .object({
    schema: z.literal("itera.agent-config/v1"),
    fleet: topicSegment.optional(),
    broker: z
      .string()
      .regex(/^(mqtts?|wss?|tcp):\/\/[^\s]+$/, "an MQTT URL such as mqtt://broker.local:1883")
      .optional(),
    device_id: topicSegment.optional(),
  })
  .strict();

export type AgentConfig = z.infer<typeof agentConfigSchema>;

/** Build the config from --fleet/--broker/--device-id; undefined when none was given. */
export function agentConfigFromOptions(o: {
  fleet?: string;
  broker?: string;
  deviceId?: string;
}): AgentConfig | undefined {
  if (o.fleet === undefined && o.broker === undefined && o.deviceId === undefined) return undefined;
  const r = agentConfigSchema.safeParse({
    schema: "itera.agent-config/v1",
    fleet: o.fleet,
    broker: o.broker,
    device_id: o.deviceId,
  });
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const flag =
      { fleet: "--fleet", broker: "--broker", device_id: "--device-id" }[String(issue.path[0])] ?? "";
    throw new IteraError(`invalid ${flag}: ${issue.message}`, { fix: `correct ${flag}` });
  }
  return r.data;
}

export function renderAgentConfig(c: AgentConfig): string {
  return JSON.stringify(c, null, 2);
}
