// Small wording helpers the commands share: "did you mean" for a near miss, and the flags a
// copyable hint must carry so that pasting it reaches the same daemon.
import type { ParsedArgs } from "./args.ts";
import { str } from "./args.ts";

/** Edit distance (insertions, deletions, substitutions, adjacent swaps). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The candidate `word` most likely meant: the nearest within 2 edits (1 for words of up to
 * 3 letters), or the only candidate it is a prefix of. Undefined when nothing is close.
 */
export function nearest(word: string, candidates: Iterable<string>): string | undefined {
  const list = [...new Set(candidates)];
  const limit = word.length <= 3 ? 1 : 2;
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of list) {
    const dist = editDistance(word, c);
    if (dist < bestD) [best, bestD] = [c, dist];
  }
  if (best !== undefined && bestD <= limit) return best;
  const prefixed = list.filter((c) => word.length >= 2 && c.startsWith(word));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}

/** Flags that pick the daemon a command talks to: a hint to copy must repeat them. */
const REACH_FLAGS = ["control", "config"] as const;

/** " --control X --config Y" for those of the reach flags the user gave; "" when none. */
export function reachFlags(args: ParsedArgs): string {
  let out = "";
  for (const name of REACH_FLAGS) {
    const v = str(args, name);
    if (v !== undefined) out += ` --${name} ${shellQuote(v)}`;
  }
  return out;
}

/** `text` as one shell word. */
export function shellQuote(text: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}
