// Each src/* folder's README says what the folder must not import; this test holds the code to
// it, and to the top-level rule of src/README.md (dependencies point down: nothing below the
// roles imports src/roles or src/cli). It also checks that every source file a folder README
// names exists, so a README cannot go on describing files that were renamed or never built.
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const SRC = join(ROOT, "src");

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...tsFiles(p));
    else if (name.endsWith(".ts")) out.push(p);
  }
  return out;
}

/** The repo-relative paths (src/...) that a file imports from our own tree. */
function localImports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const specs = [...text.matchAll(/^\s*(?:import|export)\b[^;]*?from\s+"([^"]+)"/gms), ...text.matchAll(/\bimport\(\s*"([^"]+)"\s*\)/g)].map((m) => m[1]!);
  return specs.filter((s) => s.startsWith(".")).map((s) => relative(ROOT, resolve(dirname(file), s)));
}

/** `src/roles`, `src/cli` ... from a README's "**Must not import**" sentence. */
function forbidden(readme: string): string[] {
  const line = readFileSync(readme, "utf8").split("\n").find((l) => /\*\*Must not import\*\*/.test(l));
  if (!line) return [];
  // "... except `src/clock.ts`" names what is allowed, not what is forbidden.
  return [...line.matchAll(/(except )?`(src\/[a-z0-9_./-]+)`/g)].filter((m) => !m[1]).map((m) => m[2]!.replace(/\/$/, ""));
}

function under(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(`${prefix}/`) || path === `${prefix}.ts`;
}

const folders = readdirSync(SRC).filter((d) => statSync(join(SRC, d)).isDirectory() && existsSync(join(SRC, d, "README.md")));

describe("each folder keeps its README's 'must not import' list", () => {
  const withRules = folders.filter((d) => forbidden(join(SRC, d, "README.md")).length > 0);
  test("the folders below the roles all state one", () => {
    for (const d of ["transport", "tunnel", "uplink", "nat"]) expect(withRules).toContain(d);
  });
  test.each(withRules)("src/%s", (d) => {
    const rules = forbidden(join(SRC, d, "README.md"));
    const bad: string[] = [];
    for (const f of tsFiles(join(SRC, d))) {
      for (const imp of localImports(f)) for (const r of rules) if (under(imp, r)) bad.push(`${relative(ROOT, f)} imports ${imp} (README: must not import ${r})`);
    }
    expect(bad).toEqual([]);
  });
});

describe("dependencies point down (src/README.md)", () => {
  const lower = ["src/transport", "src/tunnel", "src/uplink", "src/nat", "src/os", "src/config.ts", "src/pki.ts", "src/log.ts", "src/clock.ts", "src/netaddr.ts"];
  test.each(lower)("%s imports neither src/roles nor src/cli", (p) => {
    const files = p.endsWith(".ts") ? [join(ROOT, p)] : tsFiles(join(ROOT, p));
    const bad = files.flatMap((f) => localImports(f).filter((i) => under(i, "src/roles") || under(i, "src/cli")).map((i) => `${relative(ROOT, f)} → ${i}`));
    expect(bad).toEqual([]);
  });
});

describe("folder READMEs name only files that exist", () => {
  test.each(folders)("src/%s/README.md", (d) => {
    const text = readFileSync(join(SRC, d, "README.md"), "utf8");
    const named = [...text.matchAll(/`([a-z0-9_/-]+\.ts)`/g)].map((m) => m[1]!);
    const missing = named.filter((n) => !existsSync(join(SRC, d, n)) && !existsSync(join(SRC, n)) && !existsSync(join(ROOT, n)));
    expect(missing).toEqual([]);
  });
});
