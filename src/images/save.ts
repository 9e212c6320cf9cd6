// `node save NODE NAME`: a node's overlay upper (network mode: the RAM layer, /run/netroot/rw/upper
// on the node; hybrid mode: walt-hybrid/<id>/diff on its disk) as a new version on top of the
// image the node booted, deletions included (overlay whiteouts: char device 0/0; opaque
// directories: trusted.overlay.opaque=y). The upper arrives as a tarball (GNU tar with
// --xattrs --xattrs-include='*' --numeric-owner, made on the node): it is untrusted and unpacked
// with the import's rules into scratch, then applied like a session's upper.
import { join } from "node:path";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import { commitUpper } from "./session.ts";
import type { Commit } from "./store.ts";
import { unpack } from "./unpack.ts";

/** The image a node runs: its latest boot's, else the one it is set to boot. */
export function bootedImage(ctx: Pick<Context, "db" | "nodes">, nodeRef: string): string {
  const node = ctx.nodes.get(nodeRef);
  const boot = ctx.db.prepare(
    "SELECT image_id FROM boots WHERE mac = ? AND image_id IS NOT NULL ORDER BY rowid DESC LIMIT 1",
  ).get(node.mac) as { image_id: string } | undefined;
  const id = boot?.image_id ?? node.imageId;
  if (!id) throw new UserError(`node ${node.name} has never booted an image`);
  return id;
}

export async function saveNode(
  ctx: Pick<Context, "db" | "nodes" | "images">,
  nodeRef: string,
  name: string,
  upperTar: string,
  command: string | null,
): Promise<Commit> {
  const base = ctx.images.get(bootedImage(ctx, nodeRef));
  const st = await Deno.lstat(upperTar).catch(() => null);
  if (!st?.isFile) throw new UserError(`${upperTar}: not a regular file (the upper's tarball)`);
  const scratch = ctx.images.scratch("save");
  try {
    await Deno.mkdir(scratch, { mode: 0o700 });
    const upper = join(scratch, "upper");
    const u = await unpack(upperTar, upper);
    if (!u.format.startsWith("tar")) throw new UserError(`${upperTar}: not a tarball`);
    return await commitUpper(ctx.images, upper, base.id, name, { madeBy: "save", command });
  } finally {
    await ctx.images.dropScratch(scratch);
  }
}
