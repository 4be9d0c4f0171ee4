// src/os is the bottom layer: it may import node:, bun: and src/clock.ts, nothing else of ours.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const OS = join(import.meta.dir, "../src/os");
const ALLOWED_LOCAL = new Set(["../clock.ts"]);

test.each(readdirSync(OS).filter((f) => f.endsWith(".ts")))("src/os/%s imports only node:, bun:, its siblings and clock.ts", (f) => {
  const text = readFileSync(join(OS, f), "utf8");
  const specs = [...text.matchAll(/^\s*(?:import|export)\b[^;]*?from\s+"([^"]+)"/gms)].map((m) => m[1]!);
  expect(specs.length).toBeGreaterThan(0);
  const bad = specs.filter((s) => !(s.startsWith("node:") || s.startsWith("bun:") || /^\.\/[a-z-]+\.ts$/.test(s) || ALLOWED_LOCAL.has(s)));
  expect(bad).toEqual([]);
});
