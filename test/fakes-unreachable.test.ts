// The in-memory fakes that live in src/ beside their real adapters (FakeBackend, FakeMonitor,
// FakeRouteTable, MemoryRuleStore) are for tests only: no code path in src/ constructs one, so
// no configuration can reach them.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const SRC = join(import.meta.dir, "..", "src");
const FAKES = ["FakeBackend", "FakeMonitor", "FakeRouteTable", "MemoryRuleStore"];

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

test("src/ defines each fake and constructs none", () => {
  const files = sources(SRC).map((f) => ({ f, text: readFileSync(f, "utf8") }));
  for (const name of FAKES) expect(files.some(({ text }) => new RegExp(`export class ${name}\\b`).test(text))).toBe(true);
  const uses = files.flatMap(({ f, text }) =>
    FAKES.filter((name) => new RegExp(`new ${name}\\b|\\b${name}\\s*\\(|extends ${name}\\b`).test(text)).map((name) => `${f.slice(SRC.length + 1)}: ${name}`),
  );
  expect(uses).toEqual([]);
});
