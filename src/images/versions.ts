// What follows a new current version of an image name (a commit: import, shell, cp, build, save;
// or a rollback): the nodes that follow the name are moved to it (their next boot serves it), and
// with `rebootNodes` rebooted through the reboot seam; otherwise the answer names them, as nodes
// that boot the new version at their next boot.
import type { Context } from "../context.ts";
import type { RebootResult } from "../reboot.ts";
import type { ImageInfo } from "./store.ts";

export interface Follower {
  mac: string;
  name: string;
  /** The version it runs (until its next boot). */
  from: string;
  to: string;
}

export interface Published {
  /** Nodes now set to boot the new version. */
  followers: Follower[];
  /** Their reboots (rebootNodes), else empty: they still run `from`. */
  reboots: RebootResult[];
  /** The new version is not bootable (why): the nodes that follow the name stay where they are
   *  (`staying`, each with its version). */
  notBootable?: string;
  staying?: { name: string; imageId: string }[];
}

export async function publish(
  ctx: Pick<Context, "nodes">,
  image: Pick<ImageInfo, "id" | "name" | "current" | "bootable" | "reason">,
  rebootNodes: boolean,
): Promise<Published> {
  if (!image.current) return { followers: [], reboots: [] };
  const followers = ctx.nodes.follow(image.name);
  const staying = image.bootable
    ? []
    : ctx.nodes.staying(image.name).map(({ name, imageId }) => ({ name, imageId }));
  const reboots = rebootNodes && followers.length
    ? await ctx.nodes.rebootAll(
      followers.map((f) => f.mac),
      `image ${image.name} now at version ${image.id.slice(0, 12)}`,
    )
    : [];
  return {
    followers,
    reboots,
    ...(staying.length && { notBootable: image.reason ?? "not bootable", staying }),
  };
}

/** One line for the CLI: who boots the new version now, or who still runs an old one. */
export function publishedText(name: string, p: Published): string {
  const staying = p.staying?.length
    ? `warning: this version is not bootable (${p.notBootable}): the nodes that follow ${name} ` +
      "stay on their version until a bootable one: " +
      p.staying.map((n) => `${n.name} (${n.imageId.slice(0, 12)})`).join(", ")
    : "";
  return [staying, followersText(name, p)].filter(Boolean).join("\n");
}

function followersText(name: string, p: Published): string {
  if (!p.followers.length) return "";
  if (p.reboots.length) {
    return p.reboots.map((r) => {
      const node = p.followers.find((f) => f.mac === r.mac)?.name ?? r.mac;
      return `${node}: ${r.ok ? r.message : `not rebooted: ${r.message}`}`;
    }).join("\n");
  }
  // Not "still running the old version": a follower may be off, or never booted at all.
  const names = p.followers.map((f) => `${f.name} (was ${f.from.slice(0, 12)})`).join(", ");
  return `the new version of ${name} boots at the next boot of: ${names} ` +
    "(--reboot-nodes reboots them now)";
}
