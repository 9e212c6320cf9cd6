// Paths inside an image tree, resolved as chroot(root) would: absolute symlink targets are taken
// relative to the root and `..` stops at the root, so an image's `/vmlinuz -> /boot/vmlinuz-…` or
// a hostile `../../etc/shadow` never reaches the host's files. Shared by the HTTP and TFTP boot
// routes, the initramfs builder and the node init (which checks the image's /sbin/init).

export interface RootPath {
  /** Host path of the target (under root); what exists of it when `missing` is set. */
  host: string;
  /** The first component that does not exist, in the image's terms ("/boot/vmlinuz-6.1"). */
  missing?: string;
  /** True when a `..` tried to climb above the root (clamped, as the kernel does). */
  escaped: boolean;
}

/** Components the links met may add to a resolution in all, each a lookup of its own: 40 links of
 *  4 KB of `d/../` each took 32,000 lookups, 250 ms of the server's only thread at every TFTP
 *  request for an image's /boot (any host may send one in a node's name). Debian's own links add
 *  at most 9 to a path's own. */
const MAX_LINK_COMPONENTS = 256;

export function resolveInRoot(root: string, path: string, maxLinks = 40): RootPath {
  const base = root.replace(/\/+$/, "");
  let todo = path.split("/").filter((c) => c && c !== ".");
  const done: string[] = [];
  let escaped = false;
  for (let links = 0, added = 0; todo.length;) {
    const c = todo.shift()!;
    if (c === "..") {
      if (!done.length) escaped = true;
      done.pop();
      continue;
    }
    const host = `${base}/${[...done, c].join("/")}`;
    let st: Deno.FileInfo;
    try {
      st = Deno.lstatSync(host);
    } catch {
      return {
        host: `${base}/${[...done, c, ...todo].join("/")}`,
        missing: `/${[...done, c].join("/")}`,
        escaped,
      };
    }
    if (st.isSymlink) {
      if (++links > maxLinks) throw new Error(`too many symbolic links resolving ${path}`);
      const target = Deno.readLinkSync(host);
      if (target.startsWith("/")) done.length = 0;
      const parts = target.split("/").filter((x) => x && x !== ".");
      if ((added += parts.length) > MAX_LINK_COMPONENTS) {
        throw new Error(
          `symbolic links resolving ${path} add more than ${MAX_LINK_COMPONENTS} components`,
        );
      }
      todo = [...parts, ...todo];
    } else done.push(c);
  }
  return { host: `${base}/${done.join("/")}`, escaped };
}

/** True when `path`, resolved inside `root` as chroot(root) would, is an executable regular file.
 *  The init checks the image's init with it before the point of no return (the hybrid root
 *  before it is taken: network mode is still there to fall back to). */
export function isExecutableIn(root: string, path: string): boolean {
  let host: string;
  try {
    const r = resolveInRoot(root, path);
    if (r.missing) return false;
    host = r.host;
  } catch {
    return false; // a symlink loop
  }
  const st = Deno.statSync(host);
  return st.isFile && ((st.mode ?? 0) & 0o111) !== 0;
}
