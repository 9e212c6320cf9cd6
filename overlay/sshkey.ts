// The server's ssh key in the new root's /root/.ssh/authorized_keys, written by netroot init just
// before the switch (network and hybrid mode alike): the server can then reboot the node cleanly
// and run commands on it through the image's own sshd. Nothing of netroot keeps running on the
// node for it.
//
// The new root is the image's, and the image is untrusted: it may have planted /root/.ssh or
// authorized_keys as a symlink (to /proc/sysrq-trigger, to a disk, out of the new root), a
// hard link to another file, a FIFO, a huge file. Nothing else runs on the node at this point
// (we are PID 1 before the switch), so what lstat shows stays true until we act on it. Rules:
// never follow a symlink here (a symlinked .ssh or authorized_keys is removed — the link, not its
// target — and replaced by a real one); /root itself must be a real directory (else the key is
// refused); the file is rewritten through a new file created with O_EXCL and renamed over the old
// one (a hard link planted there is broken, not written through); only netroot's own marked line
// is replaced, the image's keys are kept; a file over 256 KiB or of another type is refused.
import { isServerLine, keyMarker } from "../contract/serverkey.ts";
import { lchown } from "../src/linux/fsops.ts";

export { keyMarker };
/** The largest authorized_keys kept (a planted huge file is refused, not read into RAM). */
export const maxAuthorizedKeys = 256 * 1024;

function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

function kindOf(st: Deno.FileInfo): string {
  return st.isSymlink
    ? "a symlink"
    : st.isFile
    ? "a file"
    : st.isDirectory
    ? "a directory"
    : "a special file";
}

/** authorized_keys text with netroot's line (any older netroot key included) replaced by `key`. */
export function withServerKey(text: string, key: string): string {
  const kept = text.split("\n").filter((l) => l.trim() !== "" && !isServerLine(l));
  return [...kept, `${key} ${keyMarker}`].join("\n") + "\n";
}

/**
 * Puts `key` (`ssh-ed25519 AAAA…`) into `<root>/root/.ssh/authorized_keys`, mode 0600 in a 0700
 * directory, both owned by root. Returns what it did, one line; throws a one-line reason when the
 * image's /root makes it unsafe (the boot goes on without the key).
 */
export function installServerKey(root: string, key: string): string {
  const home = `${root}/root`;
  const homeSt = lstatOrNull(home);
  if (homeSt === null) {
    Deno.mkdirSync(home, { mode: 0o700 });
    lchown(home, 0, 0);
  } else if (!homeSt.isDirectory) {
    throw new Error(`/root in the image is ${kindOf(homeSt)}, not a directory: key not installed`);
  }
  const notes: string[] = [];
  const dir = `${home}/.ssh`;
  const dirSt = lstatOrNull(dir);
  if (dirSt?.isSymlink) {
    Deno.removeSync(dir); // the link itself: its target is never touched
    notes.push("replaced the symlink /root/.ssh");
  } else if (dirSt && !dirSt.isDirectory) {
    throw new Error(`/root/.ssh in the image is ${kindOf(dirSt)}: key not installed`);
  }
  if (!dirSt || dirSt.isSymlink) Deno.mkdirSync(dir, { mode: 0o700 });
  lchown(dir, 0, 0);
  Deno.chmodSync(dir, 0o700); // a real directory (checked above): chmod follows nothing here
  const file = `${dir}/authorized_keys`;
  const st = lstatOrNull(file);
  let text = "";
  if (st?.isSymlink) notes.push("replaced the symlink authorized_keys");
  else if (st && !st.isFile) {
    throw new Error(`/root/.ssh/authorized_keys in the image is ${kindOf(st)}: key not installed`);
  } else if (st && st.size > maxAuthorizedKeys) {
    throw new Error(
      `/root/.ssh/authorized_keys in the image is ${st.size} bytes (over ${maxAuthorizedKeys}): ` +
        "key not installed",
    );
  } else if (st) text = new TextDecoder().decode(Deno.readFileSync(file));
  const tmp = `${dir}/.authorized_keys.netroot-${Deno.pid}`;
  if (lstatOrNull(tmp)) Deno.removeSync(tmp); // the image's, or a leftover: never opened
  const f = Deno.openSync(tmp, {
    createNew: true, // O_EXCL: a symlink planted at this name is not followed
    write: true,
    mode: 0o600,
  });
  try {
    const bytes = new TextEncoder().encode(withServerKey(text, key));
    for (let at = 0; at < bytes.length;) at += f.writeSync(bytes.subarray(at));
    // On the disk before the rename: in a persistent root an empty file left by a power cut
    // would hide the image's own keys for good (ext4 allocates a new file's blocks at writeback,
    // and the rename can reach the disk first).
    f.syncSync();
  } finally {
    f.close();
  }
  lchown(tmp, 0, 0);
  Deno.chmodSync(tmp, 0o600);
  Deno.renameSync(tmp, file); // replaces a symlink or a hard link: never writes through one
  const kept = text.split("\n").filter((l) => l.trim() !== "" && !isServerLine(l)).length;
  return [`server key in /root/.ssh/authorized_keys (${kept} image key(s) kept)`, ...notes]
    .join("; ");
}
