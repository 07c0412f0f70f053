/** Helpers of the serve tests: Server-Sent Events parsing, Prometheus text parsing, JSON requests. */

export interface SseEvent {
  event: string | undefined;
  data: string;
}

/** Split an event-stream body into events (`event:` and `data:` lines, blank-line separated; comments skipped). */
export function parseSse(text: string): SseEvent[] {
  const events: SseEvent[] = [];
  for (const block of text.split("\n\n")) {
    if (!block.trim()) continue;
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event = line.slice(7);
      else if (line.startsWith("data: ")) data.push(line.slice(6));
    }
    if (data.length > 0) events.push({ event, data: data.join("\n") });
  }
  return events;
}

/** Read a streaming response until `count` complete events have arrived (the rest stays unread). */
export async function readEvents(response: Response, count: number): Promise<SseEvent[]> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  for (;;) {
    const events = parseSse(text.slice(0, text.lastIndexOf("\n\n") + 2));
    if (events.length >= count) {
      reader.releaseLock();
      return events;
    }
    const { value, done } = await reader.read();
    if (done) throw new Error(`the stream ended after ${events.length} events`);
    text += decoder.decode(value, { stream: true });
  }
}

/** The sum of the samples of `name` whose labels include `labels`, in a Prometheus text exposition (0 when none). */
export function metricValue(exposition: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of exposition.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      [...(m[3] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[4]);
  }
  return sum;
}

/** POST a JSON body; `headers` are added to the JSON content type. */
export async function postJson(
  url: string,
  body: unknown,
  init: Omit<RequestInit, "headers"> & { headers?: Record<string, string> } = {},
): Promise<Response> {
  return fetch(url, {
    ...init,
    method: "POST",
    headers: { "content-type": "application/json", ...init.headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}
