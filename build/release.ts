// Release build: compiles src/main.ts into one self-contained executable per target and role,
// then writes OUT/SHA256SUMS and OUT/SIZES.txt for every release artifact present in OUT.
//
//   bun build/release.ts [--target NAME]... [--role generic|onsite|master|relay]... [--out DIR]
//
// Exit codes: 0 built, 1 a build or the targets file failed, 2 bad arguments.
// Cross-compiling fetches each target's Bun runtime from the npm registry once (then
// ~/.bun/install/cache). Decisions live in ./matrix.ts; this file runs git, bun and hashes.
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import {
  buildMatrix,
  commitLabel,
  compileArgv,
  parseReleaseArgs,
  parseTargets,
  ReleaseUsageError,
  selectRoles,
  selectTargets,
  sha256sumsText,
  sizesText,
  type Artifact,
  type BuildEntry,
  type TargetSpec,
} from "./matrix.ts";

const REPO = resolve(import.meta.dir, "..");
const TARGETS_FILE = join(REPO, "targets", "targets.toml");
const ENTRY_POINT = "src/main.ts";

async function main(argv: readonly string[]): Promise<number> {
  let entries: BuildEntry[];
  let targets: TargetSpec[];
  let outDir: string;
  try {
    const args = parseReleaseArgs(argv);
    outDir = resolve(args.out ?? join(REPO, "dist"));
    targets = parseTargets(Bun.TOML.parse(await Bun.file(TARGETS_FILE).text()), relative(process.cwd(), TARGETS_FILE) || TARGETS_FILE);
    // Validate names before asking git anything, so a typo fails at once with exit 2.
    selectTargets(targets, args.targets);
    selectRoles(args.roles);
    entries = buildMatrix(targets, { targets: args.targets, roles: args.roles, outDir, commit: gitCommit() });
    // The build time (src/version.ts buildTime): certificates are never judged with a clock
    // earlier than it, on a device without an RTC.
    const built = buildTimeIso();
    for (const e of entries) e.defines.AGENT_BUILD_TIME = built;
  } catch (err) {
    if (err instanceof ReleaseUsageError) {
      process.stderr.write(`release: ${err.message}\n${err.hint ? `hint: ${err.hint}\n` : ""}`);
      return 2;
    }
    process.stderr.write(`release: ${(err as Error).message}\n`);
    return 1;
  }
  if (!(await Bun.file(join(REPO, ENTRY_POINT)).exists())) {
    process.stderr.write(`release: ${ENTRY_POINT} does not exist in ${REPO}\n`);
    return 1;
  }

  await mkdir(outDir, { recursive: true });
  const commit = entries[0]?.defines.AGENT_BUILD_COMMIT ?? "";
  process.stdout.write(`release: ${entries.length} executable${entries.length === 1 ? "" : "s"} into ${outDir} (commit ${commit}, bun ${Bun.version})\n`);
  let failed = false;
  try {
    for (const entry of entries) {
      if (!(await compile(entry))) {
        failed = true;
        break;
      }
    }
  } finally {
    // Written even after a failure, so OUT always has sums that match its files.
    await writeManifests(targets, outDir);
  }
  return failed ? 1 : 0;
}

/** Builds into a temporary name and renames on success: a failed build leaves no half file. */
async function compile(entry: BuildEntry): Promise<boolean> {
  const tmp = `${entry.outfile}.tmp-${process.pid}`;
  const argv = compileArgv(process.execPath, entry, ENTRY_POINT, tmp);
  const started = performance.now();
  const proc = Bun.spawn(argv, { cwd: REPO, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  // With --compile the source map is inside the executable; the copy Bun writes beside it is noise.
  await rm(`${tmp}.map`, { force: true });
  if (code !== 0) {
    await rm(tmp, { force: true });
    process.stderr.write(`release: building ${entry.artifact} (${entry.bunTarget}) failed with exit code ${code}\n${stdout}${stderr}`);
    if (/fetch|download|registry|network|ENOTFOUND|ECONN/i.test(stderr)) {
      process.stderr.write(`hint: cross-compiling downloads the ${entry.bunTarget} runtime from the npm registry the first time; check network access\n`);
    }
    return false;
  }
  await rename(tmp, entry.outfile);
  process.stdout.write(`  built ${entry.artifact} in ${seconds} s\n`);
  return true;
}

/** SHA256SUMS and SIZES.txt over every release artifact present in OUT, not only this run's. */
async function writeManifests(targets: TargetSpec[], outDir: string): Promise<void> {
  const everything = buildMatrix(targets, { outDir, commit: "" });
  const present: Artifact[] = [];
  for (const e of everything) {
    const info = await stat(e.outfile).catch(() => undefined);
    if (!info?.isFile()) continue;
    present.push({ target: e.target, artifact: e.artifact, bytes: info.size, sha256: await sha256File(e.outfile) });
  }
  const sums = join(outDir, "SHA256SUMS");
  const sizesFile = join(outDir, "SIZES.txt");
  if (present.length === 0) {
    // An empty SHA256SUMS makes `sha256sum -c` fail; no artifacts, no manifests.
    await rm(sums, { force: true });
    await rm(sizesFile, { force: true });
    process.stdout.write(`no release artifacts in ${outDir}\n`);
    return;
  }
  const sizes = sizesText(targets, present);
  await Bun.write(sums, sha256sumsText(present));
  await Bun.write(sizesFile, sizes);
  const shown = relative(process.cwd(), outDir);
  const dir = shown === "" ? "." : shown.startsWith("..") ? outDir : shown;
  process.stdout.write(`\n${sizes}wrote ${sums} (check: cd ${dir} && sha256sum -c SHA256SUMS)\n`);
}

async function sha256File(path: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) hasher.update(chunk);
  return hasher.digest("hex");
}

/**
 * The short commit, "-dirty" when tracked files differ from HEAD or untracked (not ignored)
 * files exist: an untracked source file can end up in the bundle, so the build would not be
 * reproducible from the commit alone.
 */
function gitCommit(): string {
  const git = (...args: string[]) => Bun.spawnSync(["git", ...args], { cwd: REPO, stdout: "pipe", stderr: "ignore" });
  const head = git("rev-parse", "--short=12", "HEAD");
  const status = git("status", "--porcelain");
  const hash = head.exitCode === 0 ? head.stdout.toString().trim() : undefined;
  const dirty = status.exitCode !== 0 || status.stdout.toString().trim() !== "";
  return commitLabel(hash, dirty);
}

/**
 * SOURCE_DATE_EPOCH when set (reproducible builds), else the HEAD commit's time for a clean
 * tree (the same commit builds the same bytes), else now. Never later than the real build.
 */
function buildTimeIso(): string {
  const sde = Number(process.env.SOURCE_DATE_EPOCH);
  if (process.env.SOURCE_DATE_EPOCH && Number.isInteger(sde) && sde > 0) return new Date(sde * 1000).toISOString();
  if (!gitCommit().endsWith("-dirty")) {
    const r = Bun.spawnSync(["git", "log", "-1", "--format=%ct", "HEAD"], { cwd: REPO, stdout: "pipe", stderr: "ignore" });
    const secs = Number(r.stdout.toString().trim());
    if (r.exitCode === 0 && Number.isInteger(secs) && secs > 0) return new Date(secs * 1000).toISOString();
  }
  return new Date().toISOString();
}

process.exit(await main(process.argv.slice(2)));
