// `image cp`: host files into an image (a new version, through a session) and out of one. Image
// paths are resolved as chroot(image root) would (src/images/upper.ts): a symlink in the image
// never leads a copy outside it, in either direction.
import { basename, join } from "node:path";
import { resolveInRoot } from "../../contract/rootpath.ts";
import { UserError } from "../errors.ts";
import { lstatOrNull } from "./archivepath.ts";
import type { Commit, ImageStore } from "./store.ts";
import { commitOrDiscard } from "./session.ts";
import { type CopiedLinks, copyTree, destinationIn, sourceIn } from "./upper.ts";

export async function copyIn(
  images: ImageStore,
  sources: string[],
  ref: string,
  path: string,
  opts: { name?: string; command: string | null; signal?: AbortSignal },
): Promise<Commit> {
  for (const src of sources) {
    if (!lstatOrNull(src)) throw new UserError(`${src}: no such file or directory`);
  }
  if (sources.length > 1) {
    // Several sources go into a directory, as cp(1) wants.
    await images.ensureTree(images.get(ref).id);
    const d = await inImage(() => resolveInRoot(images.data.rootfs(images.get(ref).id), path));
    if (d.missing !== undefined || !Deno.lstatSync(d.host).isDirectory) {
      throw new UserError(`${path}: not a directory in the image`);
    }
  }
  const s = await images.sessions.open(ref, opts.name);
  try {
    const links: CopiedLinks = new Map();
    for (const src of sources) {
      await copyTree(
        src,
        destinationIn(s.merged, path, basename(src.replace(/\/+$/, "")) || "root"),
        {},
        s.merged,
        links,
        undefined,
        { signal: opts.signal },
      );
    }
    // Its client gone (Ctrl-C), the copy stops between two files and nothing is committed, as a
    // build's: before, it went on and committed (and with --reboot-nodes rebooted the nodes).
    opts.signal?.throwIfAborted();
  } catch (e) {
    await images.sessions.discard(s.id);
    if (opts.signal?.aborted) throw new UserError("image cp cancelled: nothing committed");
    throw e instanceof UserError ? e : new UserError(`image cp: ${(e as Error).message}`);
  }
  return await commitOrDiscard(images, s.id, { madeBy: "cp", command: opts.command });
}

export async function copyOut(
  images: ImageStore,
  ref: string,
  path: string,
  dest: string,
): Promise<{ copied: number; dest: string }> {
  const { id } = images.get(ref);
  const release = images.hold(id);
  try {
    await images.ensureTree(id);
    return await inImage(() => copyFrom(images.data.rootfs(id), path, dest));
  } finally {
    release();
    images.schedulePrune();
  }
}

/** The image's paths are the caller's: what they lead to (a symlink loop the image holds, say)
 *  is the caller's error, not the server's. */
async function inImage<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw e instanceof UserError ? e : new UserError(`image cp: ${(e as Error).message}`);
  }
}

async function copyFrom(
  root: string,
  path: string,
  dest: string,
): Promise<{ copied: number; dest: string }> {
  const src = sourceIn(root, path);
  const st = lstatOrNull(dest);
  const to = st?.isDirectory ? join(dest, basename(src) || "root") : dest;
  return { copied: await copyTree(src, to), dest: to };
}
