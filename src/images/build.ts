// `image build`: runs a Buildfile (src/images/buildfile.ts) in one session (an overlay on the FROM
// version, src/images/session.ts). RUN steps run in systemd-nspawn on the session's tree with the
// server's network; COPY and ADD read the build context through real directories only (its
// symlinks are resolved inside it, never towards the host) and write into the image the way
// `image cp` does. The log goes to `log` line by line; a failing step discards the session and
// says which step and Buildfile line failed: nothing is committed.
import fs from "node:fs";
import { join, posix } from "node:path";
import { UserError } from "../errors.ts";
import { heldPath, O_PATH, readTextUpTo } from "../linux/fsops.ts";
import { logger } from "../log.ts";
import { type BuildStep, parseBuildfile } from "./buildfile.ts";
import { commitOrDiscard, nspawnArgs, type Session } from "./session.ts";
import type { Commit, ImageStore } from "./store.ts";
import { resolveInRoot } from "../../contract/rootpath.ts";
import { lstatOrNull, TreeView } from "./archivepath.ts";
import {
  globMatch,
  globPattern,
  ignored,
  type IgnoreRules,
  parseIgnore,
  skipped,
} from "./contextmatch.ts";
import { holdsTar } from "./tar.ts";
import { unpack } from "./unpack.ts";
import {
  type CopiedLinks,
  copyTree,
  destinationIn,
  heldFile,
  mkdirIn,
  type Walk,
} from "./upper.ts";

const log = logger("images");

export interface BuildOptions {
  name: string;
  /** Host path of the Buildfile. */
  buildfile: string;
  /** Host path of the build context. */
  context: string;
  /** Replaces the Buildfile's FROM. */
  from?: string;
  /** --build-arg: values of the ARGs the Buildfile declares, over their defaults. */
  buildArgs?: Map<string, string>;
  command: string | null;
  /** A promise returned: the reader has no room; the build waits for it (output is not kept). */
  log: (line: string) => unknown;
  signal?: AbortSignal;
}

export async function build(images: ImageStore, o: BuildOptions): Promise<Commit> {
  const ctxSt = await Deno.stat(o.context).catch(() => null);
  if (!ctxSt?.isDirectory) {
    throw new UserError(`${o.context}: the build context is not a directory`);
  }
  let bf;
  try {
    // read up to its bound, not to its end: a link to /proc/self/pagemap (size 0, no end) in
    // a context made the server read until it was killed (2 GiB in 11 s)
    bf = parseBuildfile(await readHeld(o.buildfile, "no such Buildfile"), o.buildArgs);
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  const from = o.from ?? bf.from;
  // The context is held from here on, and read through that reference only: its path is its
  // owner's, who swapped the context directory for a link to a host directory between two steps,
  // and the next COPY took the host's files into the image.
  let held: number;
  try {
    held = fs.openSync(o.context, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | O_PATH);
  } catch {
    throw new UserError(`${o.context}: the build context is not a directory`);
  }
  const context = heldPath(held);
  try {
    const ignore = await readIgnore(context).catch((e) => {
      throw new UserError((e as Error).message.replaceAll(context, o.context));
    });
    const s = await images.sessions.open(from, o.name);
    const state: State = { env: new Map(), envNames: new Set(), workdir: "/" };
    const steps = bf.steps;
    await o.log(`FROM ${from ?? "scratch"} (line ${bf.fromLine})`);
    if (bf.unused.length) {
      await o.log(`warning: no ARG takes --build-arg ${bf.unused.join(", ")}: not used`);
    }
    try {
      for (const [i, step] of steps.entries()) {
        o.signal?.throwIfAborted();
        await o.log(`step ${i + 1}/${steps.length} (line ${step.line}): ${step.text}`);
        await runStep(images, s, step, state, { ...o, context, ignore });
      }
      // cancelled during the last step (a COPY: only RUN fails when cancelled), still nothing
      o.signal?.throwIfAborted();
    } catch (e) {
      await images.sessions.discard(s.id);
      if (o.signal?.aborted) throw new UserError("build cancelled: nothing committed");
      const why = (e as Error).message.replaceAll(context, o.context);
      throw new UserError(`${why}; nothing committed`);
    }
    log.info("build done, committing", { name: o.name, steps: steps.length });
    return await commitOrDiscard(images, s.id, { madeBy: "build", command: o.command });
  } finally {
    fs.closeSync(held);
  }
}

/**
 * The regular file at `path` (a link followed), its text up to 1 MiB; `missing` says what the
 * error says when it is no regular file. It is looked at and read through one reference: looked
 * at by its path and opened by it again, a link flipped between a file and a FIFO by its owner
 * got the FIFO opened, and the build waited for a writer for ever (its client gone, a thread of
 * the server's pool held).
 */
async function readHeld(path: string, missing: string, follow = true): Promise<string> {
  let fd: number;
  try {
    const nofollow = follow ? 0 : fs.constants.O_NOFOLLOW;
    fd = fs.openSync(path, fs.constants.O_RDONLY | O_PATH | nofollow);
  } catch {
    throw new UserError(`${path}: ${missing}`);
  }
  try {
    if (!fs.fstatSync(fd).isFile()) throw new UserError(`${path}: ${missing}`);
    const text = await readTextUpTo(heldPath(fd), 1 << 20);
    if (text === undefined) throw new UserError(`${path}: larger than 1 MiB`);
    return text;
  } finally {
    fs.closeSync(fd);
  }
}

/** A build under way: its options, the context held, the context's .dockerignore. */
type Running = BuildOptions & { ignore: IgnoreRules };

/**
 * The context's .dockerignore, as Docker reads it: what it leaves out is not in the context for
 * COPY and ADD (before, `COPY . /app` took the .git, node_modules and the .env of secrets it
 * names into the image, which any host of the boot network reads).
 */
async function readIgnore(context: string): Promise<IgnoreRules> {
  const path = `${context}/.dockerignore`;
  if (!lstatOrNull(path)) return parseIgnore("");
  // itself, never a link (swapped for one to a host file, its lines would be the patterns)
  return parseIgnore(await readHeld(path, "not a regular file (nor a link)", false));
}

/** The path `host` (below the held context) as components, for .dockerignore. */
const belowContext = (context: string, host: string) =>
  host.slice(context.length).split("/").filter(Boolean);

/** What the steps so far set for the next: variables (an ENV's outweigh an ARG's) and WORKDIR. */
interface State {
  env: Map<string, string>;
  envNames: Set<string>;
  workdir: string;
}

function failed(step: BuildStep, why: string): Error {
  return new Error(`Buildfile line ${step.line} failed: ${step.text.split("\n")[0]}: ${why}`);
}

async function runStep(
  images: ImageStore,
  s: Session,
  step: BuildStep,
  state: State,
  o: Running,
): Promise<void> {
  switch (step.kind) {
    case "ENV":
      for (const [k, v] of step.vars) state.env.set(k, v), state.envNames.add(k);
      return;
    case "ARG":
      if (step.value !== undefined && !state.envNames.has(step.name)) {
        state.env.set(step.name, step.value);
      }
      return;
    case "WORKDIR":
      state.workdir = posix.resolve(state.workdir, step.dir);
      wrap(step, () => mkdirIn(s.merged, state.workdir));
      return;
    case "ignored":
      await o.log(`  ${step.instruction} means nothing to a netroot image: ignored`);
      return;
    case "RUN":
      return await run(s, step, state, o);
    case "COPY":
    case "ADD":
      return await copy(images, s, step, state, o);
  }
}

function wrap<T>(step: BuildStep, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw failed(step, (e as Error).message);
  }
}

async function wrapAsync<T>(step: BuildStep, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw failed(step, (e as Error).message);
  }
}

async function run(
  s: Session,
  step: Extract<BuildStep, { kind: "RUN" }>,
  state: State,
  o: BuildOptions,
): Promise<void> {
  wrap(step, () => mkdirIn(s.merged, state.workdir));
  const argv = step.argv ?? ["/bin/sh", "-c", step.shell!];
  const child = new Deno.Command("systemd-nspawn", {
    args: nspawnArgs(s.merged, argv, false, [
      `--chdir=${state.workdir}`,
      ...[...state.env].map(([k, v]) => `--setenv=${k}=${v}`),
    ]),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { SYSTEMD_COLORS: "0" },
  }).spawn();
  // SIGTERM, not SIGKILL: nspawn then kills the container's PID 1 (its --kill-signal), which
  // ends every process of the container. Killed outright, nspawn leaves that PID 1 running (it
  // keeps the overlay busy and our pipes open: the build would wait on it forever).
  const kill = () => child.kill("SIGTERM");
  o.signal?.addEventListener("abort", kill);
  // Each line waits for the reader: a step printing without end, read slowly, is held back by
  // its pipe instead of piling up here.
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop()!;
      for (const l of lines) await o.log(`  ${l}`);
      if (rest.length > 64 * 1024) { // a line without end: cut it, do not grow without bound
        await o.log(`  ${rest}`);
        rest = "";
      }
    }
    if (rest) await o.log(`  ${rest}`);
  };
  const [status] = await Promise.all([child.status, pump(child.stdout), pump(child.stderr)]);
  o.signal?.removeEventListener("abort", kill);
  if (!status.success) {
    throw failed(step, status.signal ? `killed by ${status.signal}` : `exit code ${status.code}`);
  }
}

async function copy(
  images: ImageStore,
  s: Session,
  step: Extract<BuildStep, { kind: "COPY" | "ADD" }>,
  state: { workdir: string },
  o: Running,
): Promise<void> {
  const dest = posix.resolve(state.workdir, step.dest);
  const sources = wrap(
    step,
    () => step.sources.flatMap((src) => matching(o.context, src, o.ignore)),
  );
  const walk: Walk = {
    skip: (name, isDirectory) => skipped(o.ignore, belowContext(o.context, name), isDirectory),
    signal: o.signal,
  };
  const intoDir = step.dest.endsWith("/") || sources.length > 1;
  // COPY makes root the owner unless --chown says otherwise (as Docker does)
  const ids = step.chown ? await wrapAsync(step, () => owners(s.merged, step.chown!)) : undefined;
  const owner = { uid: ids?.uid ?? 0, gid: ids?.gid ?? 0, mode: step.chmod };
  for (const src of sources) {
    const host = wrap(step, () => contextSource(o.context, src, o.ignore));
    const st = Deno.lstatSync(host);
    // A tarball (as Docker tells one: by its content, not its name) is extracted with the
    // import's rules (no member outside, no write through a link) into scratch, then copied in
    // with its own owners. It is read through a reference held (the context's owner swapped it
    // for a link to a host tarball as it was opened).
    using tarball = step.kind === "ADD" && st.isFile
      ? wrap(step, () => heldFile(o.context, host))
      : undefined;
    if (tarball && await holdsTar(tarball.path)) {
      const scratch = images.scratch("add");
      await Deno.mkdir(scratch, { mode: 0o700 });
      try {
        // Its files as they are, as Docker extracts them: a tarball whose root holds a
        // manifest.json or an oci-layout is no image archive to apply (a saved image to ship in
        // this one had its layers' files put at dest instead; a web app's manifest.json that was
        // not JSON failed the step).
        const { implied } = await unpack(tarball.path, join(scratch, "rootfs"), {
          signal: o.signal,
          treeOnly: true,
        }).catch((e) => {
          throw failed(step, (e as Error).message.replaceAll(tarball.path, host));
        });
        const to = wrap(step, () => mkdirIn(s.merged, dest));
        keepImageDirs(join(scratch, "rootfs"), to, implied);
        const links: CopiedLinks = new Map();
        await wrapAsync(step, async () => {
          for await (const e of Deno.readDir(join(scratch, "rootfs"))) {
            const tree = join(scratch, "rootfs", e.name);
            // its members' owners, unless --chown says otherwise (as BuildKit's unpack does)
            const walk = { signal: o.signal };
            await copyTree(tree, join(to, e.name), ids ?? {}, s.merged, links, undefined, walk);
          }
        });
      } finally {
        await images.dropScratch(scratch);
      }
      continue;
    }
    await wrapAsync(step, async () => {
      if (st.isDirectory) {
        // a directory's contents are copied, not the directory itself
        const to = mkdirIn(s.merged, dest);
        const links: CopiedLinks = new Map();
        for await (const e of Deno.readDir(host)) {
          const from = join(host, e.name);
          await copyTree(from, join(to, e.name), owner, s.merged, links, o.context, walk);
        }
      } else if (intoDir) {
        const to = join(mkdirIn(s.merged, dest), posix.basename(src));
        await copyTree(host, to, owner, s.merged, undefined, o.context, walk);
      } else {
        mkdirIn(s.merged, posix.dirname(dest));
        // an existing directory (or a link to one, inside the image) receives the file
        const to = destinationIn(s.merged, dest, posix.basename(src));
        await copyTree(host, to, owner, s.merged, undefined, o.context, walk);
      }
    });
  }
}

/**
 * The host path of source `src`, resolved inside the context: a link of the context, the source
 * itself too, is followed as chroot(context) would, as Docker follows it (`COPY current /app/`
 * with `current -> releases/2` copies that directory; before, a link named current).
 */
function contextSource(context: string, src: string, ignore: IgnoreRules): string {
  const r = resolveInRoot(context, src);
  if (r.missing !== undefined || !lstatOrNull(r.host)) {
    throw new UserError(`${src}: no such file in the build context`);
  }
  if (ignored(ignore, belowContext(context, r.host))) {
    throw new UserError(`${src}: no such file in the build context (.dockerignore leaves it out)`);
  }
  return r.host;
}

const WILDCARD = /[*?[]/;

/**
 * The context's paths source `src` names: itself, or, when it holds wildcards (`*`, `?`,
 * `[…]`, as Go's filepath.Match has them, Docker's), the entries they match, in order; none is
 * an error, as in Docker. Directories are listed as the context resolves them (inside it).
 */
function matching(context: string, src: string, ignore: IgnoreRules): string[] {
  if (!WILDCARD.test(src)) return [src];
  let found = ["/"];
  for (const part of src.split("/").filter(Boolean)) {
    const next: string[] = [];
    for (const dir of found) {
      const at = (name: string) => `${dir === "/" ? "" : dir}/${name}`;
      if (!WILDCARD.test(part)) {
        next.push(at(part));
        continue;
      }
      const pattern = globPattern(part, src);
      let r;
      try {
        r = resolveInRoot(context, dir);
      } catch {
        continue; // a loop of links
      }
      if (r.missing !== undefined || !lstatOrNull(r.host)?.isDirectory) continue;
      const names = [...Deno.readDirSync(r.host)].map((e) => e.name).sort();
      next.push(...names.filter((n) => globMatch(pattern, n)).map(at));
    }
    found = next;
  }
  // (a name after a wildcard, `*/Makefile`, is in some of the directories matched only)
  found = found.filter((p) => {
    try {
      const parent = resolveInRoot(context, posix.dirname(p));
      const host = join(parent.host, posix.basename(p));
      return parent.missing === undefined && !!lstatOrNull(host) &&
        !ignored(ignore, belowContext(context, host));
    } catch {
      return false; // a loop of links
    }
  });
  if (!found.length) throw new UserError(`${src}: no file of the context matches`);
  return found;
}

/**
 * --chown's user and group as ids: numbers as they are, names from the image's own
 * /etc/passwd and /etc/group (read as files of the image, resolved inside it, 4 MiB at most),
 * as Docker does; a user alone gives its id as the group's too (Docker's rule).
 */
async function owners(
  root: string,
  chown: { user: string; group?: string },
): Promise<{ uid: number; gid: number }> {
  const lookup = async (file: string, name: string): Promise<number> => {
    if (/^\d+$/.test(name)) return Number(name);
    const r = resolveInRoot(root, file);
    const text = r.missing === undefined && lstatOrNull(r.host)?.isFile
      ? await readTextUpTo(r.host, 4 << 20)
      : undefined;
    for (const l of (text ?? "").split("\n")) {
      const f = l.split(":");
      if (f[0] === name && /^\d+$/.test(f[2] ?? "")) return Number(f[2]);
    }
    throw new UserError(`--chown: no ${name} in the image's ${file}`);
  };
  const uid = await lookup("/etc/passwd", chown.user);
  const gid = chown.group === undefined ? uid : await lookup("/etc/group", chown.group);
  return { uid, gid };
}

/**
 * A directory a tarball does not list (tar made it as the parent of a member) takes the image's
 * owner, mode and time where the image has it, as GNU tar and Docker leave an existing parent
 * alone: `ADD keys.tar /` holding only root/.ssh/authorized_keys must not turn the image's /root
 * from 0700 into 0755, nor /tmp from 1777.
 */
function keepImageDirs(tree: string, to: string, implied: Set<string> | undefined): void {
  const image = new TreeView(to);
  for (const rel of implied ?? []) {
    const have = rel === "/" ? undefined : image.dir(rel);
    if (!have) continue;
    const st = Deno.lstatSync(have);
    Deno.chownSync(tree + rel, st.uid!, st.gid!);
    Deno.chmodSync(tree + rel, st.mode! & 0o7777); // after chown, which may drop set-group-ID
    Deno.utimeSync(tree + rel, st.atime!, st.mtime!);
  }
}
