// Network mode (a RootMode, contract/rootmode.ts): the image read-only over NFS as the lower layer,
// a tmpfs for the upper and work dirs, the overlay of both as the new root. Every file the node
// reads comes from the server; every write stays in RAM (or goes to /persist, mounted by the init).
import type { Layout, RootMode } from "../contract/rootmode.ts";
import { bindReadOnly, mount, MS_NODEV, MS_NOSUID } from "../src/linux/mount.ts";

/** tmpfs (upper + work) and the overlay at `newRoot`, over the already mounted `lower`; the upper
 *  also read-only at `upper` (the place `node save` reads, the same in hybrid mode). */
export function mountOverlay(l: Layout, tmpfsSize: string): void {
  Deno.mkdirSync(l.rw, { recursive: true });
  mount("netroot-rw", l.rw, "tmpfs", MS_NOSUID | MS_NODEV, `size=${tmpfsSize},mode=0755`);
  Deno.mkdirSync(`${l.rw}/upper`, { mode: 0o755 });
  Deno.mkdirSync(`${l.rw}/work`, { mode: 0o755 });
  Deno.mkdirSync(l.newRoot, { recursive: true });
  mount(
    "overlay",
    l.newRoot,
    "overlay",
    0,
    `lowerdir=${l.lower},upperdir=${l.rw}/upper,workdir=${l.rw}/work`,
  );
  bindReadOnly(`${l.rw}/upper`, l.upper);
}

export const networkMode: RootMode = {
  name: "network",
  async mountRoot({ params: p, layout: l, stage, mountImage }) {
    await stage(
      "nfs-root",
      `the server exports ${p.root.host}:${p.root.path} (netroot serve running, NFS server up) ` +
        `and this node reaches ${p.root.host} (TCP 2049); netroot.timeout=${p.timeoutS}`,
      () => mountImage(l.lower),
      (r) => `${r.describe} on ${l.lower}, attempt ${r.attempts}`,
    );
    await stage(
      "overlay",
      "the kernel has overlay and tmpfs (modules.order) and netroot.tmpfs is a valid size",
      () => mountOverlay(l, p.tmpfsSize),
      () => `overlay on ${l.newRoot}, upper in tmpfs size=${p.tmpfsSize}`,
    );
    return true;
  },
};
