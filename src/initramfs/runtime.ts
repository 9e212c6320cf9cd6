// The Deno runtime of a node whose machine is not the server's: an aarch64 node runs the arm64
// build of the very Deno version the server runs (the pinned one of tools/), which npm publishes
// as @deno/linux-arm64-glibc. Fetched with `npm pack` at the first build that needs it and kept
// in the cache dir; an air-gapped server gets the file put there by hand (the error says where).
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { syncFile } from "../linux/fsops.ts";
import { EM_AARCH64, machineName, readElfFile } from "./elf.ts";
import { keepNewest, sweepTempFiles } from "./prune.ts";

/** npm package of the Deno runtime per node machine. */
const NPM_RUNTIME: Record<number, string> = { [EM_AARCH64]: "@deno/linux-arm64-glibc" };

/** Where the runtime of `machine` at `version` is cached under `cacheDir`. */
export function runtimePath(
  cacheDir: string,
  machine: number,
  version = Deno.version.deno,
): string {
  return join(cacheDir, `deno-${version}-${machineName(machine)}`, "deno");
}

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, {
      args,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    })
      .output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${cmd} not found: it fetches the node's Deno runtime`, 503);
    }
    throw e;
  }
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    throw new UserError(`${cmd} ${args.join(" ")} failed: ${err}`, 503);
  }
}

/** Fetches under way, by cached path: builds that start together (an import's, a boot's) share
 *  one `npm pack` instead of each downloading the runtime. */
const fetching = new Map<string, Promise<string>>();

/**
 * The path of the Deno binary for `machine`, fetched from npm when not cached yet (into a temp
 * dir, flushed, then renamed into place: a killed fetch or a power cut leaves no half file under
 * the cached name).
 */
export function nodeRuntime(
  machine: number,
  cacheDir: string,
  opts: { version?: string; npm?: string } = {},
): Promise<string> {
  const key = runtimePath(cacheDir, machine, opts.version ?? Deno.version.deno);
  let p = fetching.get(key);
  if (!p) {
    p = fetchRuntime(machine, cacheDir, opts).finally(() => fetching.delete(key));
    fetching.set(key, p);
  }
  return p;
}

async function fetchRuntime(
  machine: number,
  cacheDir: string,
  opts: { version?: string; npm?: string },
): Promise<string> {
  const version = opts.version ?? Deno.version.deno;
  const pkg = NPM_RUNTIME[machine];
  if (!pkg) throw new UserError(`no Deno runtime for ${machineName(machine)} nodes`);
  const path = runtimePath(cacheDir, machine, version);
  try {
    if (readElfFile(path).machine === machine) return path;
  } catch { /* not cached yet */ }
  await Deno.mkdir(cacheDir, { recursive: true });
  await sweepTempFiles(cacheDir);
  const tmp = await Deno.makeTempDir({
    dir: cacheDir,
    prefix: ".runtime-",
    suffix: `.${Deno.pid}.tmp`,
  });
  try {
    const spec = `${pkg}@${version}`;
    try {
      await run(opts.npm ?? "npm", ["pack", "--silent", spec, "--pack-destination", tmp], tmp);
    } catch (e) {
      throw new UserError(
        `the ${machineName(machine)} node runtime (npm ${spec}) could not be fetched: ` +
          `${(e as Error).message}; without npm or a registry, put that package's deno binary ` +
          `at ${path}`,
        503,
      );
    }
    const tgz = [...Deno.readDirSync(tmp)].find((e) => e.name.endsWith(".tgz"));
    if (!tgz) throw new UserError(`npm pack ${spec} wrote no .tgz`, 503);
    await run("tar", ["-xzf", tgz.name, "--no-same-owner", "package/deno"], tmp);
    const deno = join(tmp, "package", "deno");
    const m = readElfFile(deno).machine;
    if (m !== machine) {
      throw new UserError(`${spec}: its deno is ${machineName(m)}, not ${machineName(machine)}`);
    }
    await Deno.chmod(deno, 0o755);
    // On the disk before it has its name: a file there is trusted by its ELF header alone, and a
    // power cut during writeback would leave a torn binary under it (packed for every node).
    await syncFile(deno);
    // Whatever is there is not a valid runtime (checked above): replaced whole.
    const dir = join(path, "..");
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(join(tmp, "package"), dir);
    // Dated now (npm's archives date every member 1985): this version and the previous one stay,
    // for a rollback that finds its runtime without npm; older ones go (≈ 100 MB each, one per
    // Deno upgrade, for ever).
    const now = new Date();
    await Deno.utime(dir, now, now);
    const machineDirs = new RegExp(`^deno-.+-${machineName(machine)}$`);
    await keepNewest(cacheDir, (n) => machineDirs.test(n), 2);
    return path;
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
