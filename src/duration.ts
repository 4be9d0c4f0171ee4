// Durations as users write them: "500ms", "10s", "30m", "8h", "7d", or a sum such as "1h30m".
// Pure; returns milliseconds or throws an Error that names what was expected.

const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+)(ms|s|m|h|d)/y;

export function parseDuration(text: string): number {
  if (typeof text !== "string" || text.length === 0 || text.length > 32) {
    throw new Error(`expected a duration such as 500ms, 10s, 30m, 8h or 7d, got ${JSON.stringify(text)}`);
  }
  let total = 0;
  PART.lastIndex = 0;
  while (PART.lastIndex < text.length) {
    const at = PART.lastIndex;
    const m = PART.exec(text);
    if (!m || m.index !== at) {
      throw new Error(`expected a duration such as 500ms, 10s, 30m, 8h or 7d, got ${JSON.stringify(text)}`);
    }
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
  }
  if (!Number.isSafeInteger(total)) throw new Error(`duration ${JSON.stringify(text)} is too large`);
  return total;
}

/** The shortest exact spelling of `ms` in the units above ("1h30m", "250ms", "0s"). */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  let rest = Math.round(Math.abs(ms));
  let out = ms < 0 ? "-" : "";
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1_000], ["ms", 1]] as const) {
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out;
}
