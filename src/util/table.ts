/** Plain-text and Markdown tables: the readable default output of reporting commands. */
export type Cell = string | number | boolean | null | undefined;

function cellText(c: Cell): string {
  if (c === null || c === undefined) return "";
  if (typeof c === "number") return Number.isInteger(c) ? String(c) : c.toFixed(c < 10 ? 3 : 2);
  return String(c);
}

/** A Markdown pipe table, numeric columns right-aligned. */
export function markdownTable(headers: string[], rows: Cell[][]): string {
  const text = rows.map((r) => r.map(cellText));
  const numeric = headers.map(
    (_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === "number" || r[i] == null),
  );
  const widths = headers.map((h, i) => Math.max(h.length, 3, ...text.map((r) => (r[i] ?? "").length)));
  const pad = (s: string, i: number) => (numeric[i] ? s.padStart(widths[i]!) : s.padEnd(widths[i]!));
  const line = (cells: string[]) => `| ${cells.map((c, i) => pad(c, i)).join(" | ")} |`;
  const sep = `|${widths.map((w, i) => (numeric[i] ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
  return [line(headers), sep, ...text.map((r) => line(headers.map((_, i) => r[i] ?? "")))].join("\n");
}

/**
 * CSV with RFC 4180 quoting. A text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading
 * `'`, so a spreadsheet shows it instead of running it as a formula (CSV injection: the cells hold
 * device-supplied strings); numbers are written as they are.
 */
export function csvTable(headers: string[], rows: Cell[][]): string {
  const q = (c: Cell) => {
    const raw = c === null || c === undefined ? "" : String(c);
    const s = typeof c === "string" && /^[=+\-@\t\r]/.test(raw) ? `'${raw}` : raw;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [headers.map(q).join(","), ...rows.map((r) => r.map(q).join(","))].join("\n");
}
