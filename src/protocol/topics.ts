import { z } from "zod";

/**
 * MQTT topics (DESIGN.md §8): everything lives under `itera/v1/{fleet}/{device}/`.
 * Fleet and device ids are single topic levels, so they may not contain `/`, `+`, `#` or `$`.
 */
export const idSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, "letters, digits, '_', '.', '-' (max 64, no MQTT wildcards)");

export const PREFIX = "itera/v1";

export type DeviceTopicKind = "state" | "birth" | "telemetry" | "feedback";

export function deviceTopic(fleet: string, device: string, kind: DeviceTopicKind): string {
  return `${PREFIX}/${fleet}/${device}/${kind}`;
}

/** `need` (device: chunks it lacks) and `chunk` (coordinator: one chunk) carry an update's payload. */
export type JobTopicKind = "request" | "status" | "result" | "need" | "chunk";
const jobKinds: ReadonlySet<string> = new Set(["request", "status", "result", "need", "chunk"]);

export function jobTopic(fleet: string, device: string, jobId: string, kind: JobTopicKind): string {
  return `${PREFIX}/${fleet}/${device}/jobs/${jobId}/${kind}`;
}

/** Wildcard subscriptions a coordinator uses for a whole fleet. */
export function fleetFilter(fleet: string, kind: DeviceTopicKind | JobTopicKind): string {
  return jobKinds.has(kind) ? `${PREFIX}/${fleet}/+/jobs/+/${kind}` : `${PREFIX}/${fleet}/+/${kind}`;
}

/** A shared subscription (MQTT 5 `$share`): brokers hand each message to one member of the group. */
export function sharedFilter(group: string, filter: string): string {
  return `$share/${group}/${filter}`;
}

export type ParsedTopic =
  | { fleet: string; device: string; kind: DeviceTopicKind }
  | { fleet: string; device: string; kind: JobTopicKind; jobId: string };

/** Parse an itera topic; undefined for anything else (never throws: topics come from the network). */
export function parseTopic(topic: string): ParsedTopic | undefined {
  const parts = topic.split("/");
  if (parts[0] !== "itera" || parts[1] !== "v1") return undefined;
  const [, , fleet, device, a, jobId, kind] = parts;
  if (!fleet || !device || !a) return undefined;
  if (!idSchema.safeParse(fleet).success || !idSchema.safeParse(device).success) return undefined;
  if (parts.length === 5 && (a === "state" || a === "birth" || a === "telemetry" || a === "feedback")) {
    return { fleet, device, kind: a };
  }
  if (
    parts.length === 7 &&
    a === "jobs" &&
    jobId &&
    idSchema.safeParse(jobId).success &&
    kind !== undefined &&
    jobKinds.has(kind)
  ) {
    return { fleet, device, kind: kind as JobTopicKind, jobId };
  }
  return undefined;
}
