// The pure half of the release build: which executables a run makes (targets × roles), the
// exact `bun build` argument list for each, and the text of SHA256SUMS and SIZES.txt.
// build/release.ts does the effects (git, spawning bun, hashing files); this file only
// decides, so test/release.test.ts can table-test it.
import { parseArgs } from "node:util";
import { join } from "node:path";

export const ROLES = ["generic", "onsite", "master", "relay"] as const;
export type ReleaseRole = (typeof ROLES)[number];

/** Bad input from the person running the build: exit code 2, message says the fix. */
export class ReleaseUsageError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = "ReleaseUsageError";
  }
}

export interface TargetDefaults {
  config: string;
  state_dir: string;
  control: string;
  bin: string;
}

export interface TargetSpec {
  name: string;
  bun_target: string;
  arch: string;
  libc: "glibc" | "musl";
  musl_arch?: string;
  platform: string;
  init: "systemd" | "procd";
  packaging: string;
  runtime_deps: string[];
  qemu?: string;
  sysroot?: string;
  defaults: TargetDefaults;
}

/** Checks the parsed targets/targets.toml; every problem is reported with its key. */
export function parseTargets(doc: unknown, source = "targets/targets.toml"): TargetSpec[] {
  const problems: string[] = [];
  const out: TargetSpec[] = [];
  const root = doc as { targets?: unknown } | null;
  if (!isTable(root) || !isTable(root.targets)) {
    throw new Error(`${source}: expected [targets.<name>] tables`);
  }
  for (const [name, raw] of Object.entries(root.targets)) {
    const at = (key: string) => `${source}: targets.${name}.${key}`;
    if (!/^[a-z0-9][a-z0-9-]*$/.test(name)) problems.push(`${source}: target name ${JSON.stringify(name)} must be lower-case letters, digits and dashes`);
    if (!isTable(raw)) {
      problems.push(`${source}: targets.${name} must be a table`);
      continue;
    }
    const str = (key: string, optional = false): string | undefined => {
      const v = raw[key];
      if (v === undefined && optional) return undefined;
      if (typeof v !== "string" || v === "") {
        problems.push(`${at(key)}: expected a non-empty string, got ${JSON.stringify(v)}`);
        return undefined;
      }
      return v;
    };
    const oneOf = <T extends string>(key: string, allowed: readonly T[]): T | undefined => {
      const v = str(key);
      if (v !== undefined && !allowed.includes(v as T)) {
        problems.push(`${at(key)}: expected one of ${allowed.join(", ")}, got ${JSON.stringify(v)}`);
        return undefined;
      }
      return v as T | undefined;
    };
    const bunTarget = str("bun_target");
    if (bunTarget !== undefined && !bunTarget.startsWith("bun-")) problems.push(`${at("bun_target")}: expected a bun target such as "bun-linux-arm64", got ${JSON.stringify(bunTarget)}`);
    const libc = oneOf("libc", ["glibc", "musl"] as const);
    const muslArch = str("musl_arch", libc !== "musl");
    const deps = raw.runtime_deps;
    if (!Array.isArray(deps) || !deps.every((d) => typeof d === "string")) problems.push(`${at("runtime_deps")}: expected a list of package names`);
    const defaults = raw.defaults;
    let parsedDefaults: TargetDefaults | undefined;
    if (!isTable(defaults)) {
      problems.push(`${at("defaults")}: expected a [targets.${name}.defaults] table`);
    } else {
      const path = (key: keyof TargetDefaults) => {
        const v = defaults[key];
        if (typeof v !== "string" || !v.startsWith("/")) {
          problems.push(`${at(`defaults.${key}`)}: expected an absolute path, got ${JSON.stringify(v)}`);
          return "";
        }
        return v;
      };
      parsedDefaults = { config: path("config"), state_dir: path("state_dir"), control: path("control"), bin: path("bin") };
    }
    const spec: TargetSpec = {
      name,
      bun_target: bunTarget ?? "",
      arch: str("arch") ?? "",
      libc: libc ?? "glibc",
      platform: str("platform") ?? "",
      init: oneOf("init", ["systemd", "procd"] as const) ?? "systemd",
      packaging: str("packaging") ?? "",
      runtime_deps: Array.isArray(deps) ? (deps as string[]) : [],
      defaults: parsedDefaults ?? { config: "", state_dir: "", control: "", bin: "" },
    };
    if (muslArch !== undefined) spec.musl_arch = muslArch;
    const qemu = str("qemu", true);
    if (qemu !== undefined) spec.qemu = qemu;
    const sysroot = str("sysroot", true);
    if (sysroot !== undefined) spec.sysroot = sysroot;
    out.push(spec);
  }
  if (problems.length > 0) throw new Error(`invalid release targets:\n  ${problems.join("\n  ")}`);
  if (out.length === 0) throw new Error(`${source}: no targets`);
  return out;
}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** agent-<target> for the generic executable, agent-<role>-<target> for a per-role one. */
export function artifactName(target: string, role: ReleaseRole): string {
  return role === "generic" ? `agent-${target}` : `agent-${role}-${target}`;
}

export interface BuildEntry {
  target: string;
  role: ReleaseRole;
  bunTarget: string;
  /** file name inside the output directory */
  artifact: string;
  outfile: string;
  /** global name → string value; compileArgv turns each into --define NAME="json" */
  defines: Record<string, string>;
}

export interface MatrixOptions {
  /** target names to build; empty or absent = all, in targets.toml order */
  targets?: readonly string[];
  /** roles to build; empty or absent = all four */
  roles?: readonly string[];
  outDir: string;
  commit: string;
}

export function selectTargets(all: readonly TargetSpec[], names: readonly string[] | undefined): TargetSpec[] {
  if (!names || names.length === 0) return [...all];
  const known = all.map((t) => t.name);
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length > 0) {
    throw new ReleaseUsageError(`unknown target ${unknown.map((n) => JSON.stringify(n)).join(", ")}`, `targets: ${known.join(", ")} (from targets/targets.toml)`);
  }
  return all.filter((t) => names.includes(t.name));
}

export function selectRoles(names: readonly string[] | undefined): ReleaseRole[] {
  if (!names || names.length === 0) return [...ROLES];
  const unknown = names.filter((n) => !(ROLES as readonly string[]).includes(n));
  if (unknown.length > 0) {
    throw new ReleaseUsageError(`unknown role ${unknown.map((n) => JSON.stringify(n)).join(", ")}`, `roles: ${ROLES.join(", ")}`);
  }
  return ROLES.filter((r) => names.includes(r));
}

/** The executables to build: selected targets × selected roles, in a stable order. */
export function buildMatrix(all: readonly TargetSpec[], opts: MatrixOptions): BuildEntry[] {
  const targets = selectTargets(all, opts.targets);
  const roles = selectRoles(opts.roles);
  return targets.flatMap((t) =>
    roles.map((role) => {
      const artifact = artifactName(t.name, role);
      return {
        target: t.name,
        role,
        bunTarget: t.bun_target,
        artifact,
        outfile: join(opts.outDir, artifact),
        defines: {
          AGENT_BUILD_COMMIT: opts.commit,
          AGENT_BUILD_TARGET: t.name,
          AGENT_BUILD_ROLE: role === "generic" ? "" : role,
          // The platform's paths, so `agent status` on OpenWRT finds /var/run/agent/... without
          // flags. Unused globals cost nothing; src/config.ts may read them like version.ts does.
          AGENT_DEFAULT_CONFIG: t.defaults.config,
          AGENT_DEFAULT_STATE_DIR: t.defaults.state_dir,
          AGENT_DEFAULT_CONTROL: t.defaults.control,
        },
      };
    }),
  );
}

/**
 * The `bun build` command for one entry (argv, never a shell string).
 *
 * --sourcemap=linked: with --compile Bun embeds the source map in the executable, so a stack
 * trace names src/…/file.ts:line:col instead of a column in one minified line (~0.6 MB on a
 * ~105 MB artifact that the runtime dominates). Bun also writes the map beside the output;
 * release.ts deletes that copy. Minify syntax and whitespace but not identifiers: with
 * --minify, functions appear as `at i (…)` in traces and `fn.name`/`constructor.name` change,
 * and Bun 1.4.5's --keep-names did not prevent it (measured); keeping names costs ~90 KB.
 * --bytecode: the bundle ships precompiled JavaScriptCore bytecode, so start-up skips
 * parsing it: `agent --version` went from ~46 ms to ~17 ms median on x64 (measured with
 * hyperfine, ~3 MB more per artifact). Every CLI call pays start-up, and a Raspberry Pi
 * pays it several times over. It needs a CommonJS-compatible entry (no top-level await).
 * .env and bunfig.toml autoloading is off: a root daemon must not change behaviour (or
 * preload code) because of the directory it was started in.
 */
export function compileArgv(bun: string, entry: BuildEntry, entryPoint: string, outfile = entry.outfile): string[] {
  const argv = [
    bun,
    "build",
    "--compile",
    `--target=${entry.bunTarget}`,
    "--minify-syntax",
    "--minify-whitespace",
    "--sourcemap=linked",
    "--bytecode",
    "--no-compile-autoload-dotenv",
    "--no-compile-autoload-bunfig",
  ];
  for (const [name, value] of Object.entries(entry.defines)) argv.push("--define", `${name}=${JSON.stringify(value)}`);
  argv.push(`--outfile=${outfile}`, entryPoint);
  return argv;
}

/** "<hash>[-dirty]", or "unknown[-dirty]" before the first commit. */
export function commitLabel(shortHash: string | undefined, dirty: boolean): string {
  return `${shortHash && /^[0-9a-f]+$/.test(shortHash) ? shortHash : "unknown"}${dirty ? "-dirty" : ""}`;
}

export interface ReleaseArgs {
  targets: string[];
  roles: string[];
  out: string | undefined;
}

export const RELEASE_USAGE = "usage: bun build/release.ts [--target NAME]... [--role generic|onsite|master|relay]... [--out DIR]";

export function parseReleaseArgs(argv: readonly string[]): ReleaseArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        target: { type: "string", multiple: true },
        role: { type: "string", multiple: true },
        out: { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    throw new ReleaseUsageError((err as Error).message, RELEASE_USAGE);
  }
  const split = (vs: string[] | undefined) => (vs ?? []).flatMap((v) => v.split(",")).filter((v) => v !== "");
  if (parsed.values.out === "") throw new ReleaseUsageError("--out needs a directory", RELEASE_USAGE);
  return { targets: split(parsed.values.target), roles: split(parsed.values.role), out: parsed.values.out };
}

export interface Artifact {
  target: string;
  artifact: string;
  bytes: number;
  sha256: string;
}

/** sha256sum's format: two spaces between hash and file name, one line per file. */
export function sha256sumsText(artifacts: readonly Artifact[]): string {
  return artifacts.map((a) => `${a.sha256}  ${a.artifact}\n`).join("");
}

export function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}

/** SIZES.txt: artifacts grouped by target (targets.toml order), bytes and MiB, totals. */
export function sizesText(targets: readonly TargetSpec[], artifacts: readonly Artifact[]): string {
  const width = Math.max(8, ...artifacts.map((a) => a.artifact.length));
  const row = (name: string, bytes: number) => `  ${name.padEnd(width)}  ${String(bytes).padStart(11)} B  ${mib(bytes).padStart(7)} MiB\n`;
  let text = "";
  let total = 0;
  for (const t of targets) {
    const mine = artifacts.filter((a) => a.target === t.name);
    if (mine.length === 0) continue;
    text += `${t.name} (${t.bun_target}, ${t.libc}) — ${t.platform}\n`;
    for (const a of mine) {
      text += row(a.artifact, a.bytes);
      total += a.bytes;
    }
  }
  text += `total: ${artifacts.length} artifact${artifacts.length === 1 ? "" : "s"}, ${total} B, ${mib(total)} MiB\n`;
  return text;
}
