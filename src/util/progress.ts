/**
 * Live status on stderr for anything that takes more than a few seconds.
 * On a TTY it redraws one line; elsewhere (CI, pipes) it prints a line at most every few seconds,
 * so logs stay readable. Never writes to stdout, which belongs to the command's output.
 */
export interface Progress {
  update(done: number, note?: string): void;
  done(note?: string): void;
}

export function progress(label: string, total: number, opts: { quiet?: boolean } = {}): Progress {
  const stream = process.stderr;
  const tty = stream.isTTY === true;
  const start = Date.now();
  let lastPrint = 0;
  const render = (done: number, note?: string): string => {
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 24;
    const filled = Math.round(frac * width);
    const elapsed = (Date.now() - start) / 1000;
    const eta = frac > 0 && frac < 1 ? ` eta ${((elapsed / frac) * (1 - frac)).toFixed(0)}s` : "";
    const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
    return `${label} ${bar} ${done}/${total} ${elapsed.toFixed(1)}s${eta}${note ? ` ${note}` : ""}`;
  };
  return {
    update(done, note) {
      if (opts.quiet) return;
      const now = Date.now();
      if (tty) {
        if (now - lastPrint < 100 && done < total) return;
        stream.write(`\r\x1b[2K${render(done, note)}`);
      } else {
        if (now - lastPrint < 5000) return;
        stream.write(`${render(done, note)}\n`);
      }
      lastPrint = now;
    },
    done(note) {
      if (opts.quiet) return;
      const line = render(total, note);
      stream.write(tty ? `\r\x1b[2K${line}\n` : `${line}\n`);
    },
  };
}
