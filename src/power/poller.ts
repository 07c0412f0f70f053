/**
 * Run `tick` every `intervalMs` until stopped; used by the meters that poll (tdp, rapl, pmic).
 * Ticks never overlap: a slow tick (a slow `vcgencmd`) delays the next instead of piling up.
 */
export function startPoller(intervalMs: number, tick: () => Promise<void> | void): () => Promise<void> {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const loop = () => {
    if (stopped) return;
    const started = performance.now();
    running = Promise.resolve()
      .then(tick)
      .catch(() => undefined)
      .finally(() => {
        if (stopped) return;
        const wait = Math.max(0, intervalMs - (performance.now() - started));
        timer = setTimeout(loop, wait);
      });
  };
  loop();
  return async () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    await running;
  };
}
