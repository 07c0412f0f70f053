import { z } from "zod";
import { feedbackSchema, modelRefSchema, PROTOCOL_VERSION } from "./schemas.js";
import { idSchema, PREFIX } from "./topics.js";

/**
 * Feedback on generations (docs/fleet.md, "Feedback and retraining"). The `feedback` payload of
 * DESIGN §8 (`{v, ts, requestId, rating, comment}`) with what a retraining needs added: the model
 * that generated, the prompt, the generated text and the user's correction. Receivers that know only
 * the base schema still accept it (unknown fields are ignored).
 */

/** The longest texts a feedback message carries (characters), so one message stays far below 256 KiB. */
export const FEEDBACK_LIMITS = { prompt: 8000, text: 16_000, correction: 16_000, comment: 4000 } as const;

export const feedbackMessageSchema = feedbackSchema.extend({
  /** The generation's id (`gen-…` from /v1/generate, `cmpl-…` from /v1/completions) is `requestId`. */
  model: modelRefSchema,
  /** The prompt's last FEEDBACK_LIMITS.prompt characters (a token-id prompt: its decoded text). */
  prompt: z.string().max(FEEDBACK_LIMITS.prompt),
  text: z.string().max(FEEDBACK_LIMITS.text),
  correction: z.string().min(1).max(FEEDBACK_LIMITS.correction).nullable(),
  /** When the generation was made (Unix ms); `ts` is when it was rated. */
  generated_ts: z.number().int().nonnegative(),
});
export type FeedbackMessage = z.infer<typeof feedbackMessageSchema>;

/**
 * The coordinator's "retraining requested" event, retained per fleet on
 * `itera/v1/{fleet}/_events/retraining` (a level no device id can have: ids begin with a letter or
 * digit), so a training pipeline that subscribes later still sees the latest one.
 */
export const retrainingEventSchema = z.looseObject({
  v: z.literal(PROTOCOL_VERSION),
  ts: z.number().int().nonnegative(),
  event: z.literal("retraining_requested"),
  fleet: idSchema,
  model: z.object({ id: z.string(), sha256: z.string(), quant: z.string() }),
  negatives: z.number().int().nonnegative(),
  threshold: z.number().int().positive(),
  window_ms: z.number().int().positive(),
  /** The window's first counted negative rating (Unix ms). */
  since_ts: z.number().int().nonnegative(),
});
export type RetrainingEvent = z.infer<typeof retrainingEventSchema>;

export function retrainingTopic(fleet: string): string {
  return `${PREFIX}/${fleet}/_events/retraining`;
}

/** Whether `topic` is a fleet's retraining-event topic (which only a coordinator may publish). */
export function isRetrainingTopic(topic: string): boolean {
  const p = topic.split("/");
  return (
    p.length === 5 &&
    `${p[0]}/${p[1]}` === PREFIX &&
    idSchema.safeParse(p[2]).success &&
    p[3] === "_events" &&
    p[4] === "retraining"
  );
}
