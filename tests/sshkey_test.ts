// The server's ssh key on its way to the node: one command-line word (contract/cmdline.ts), then
// written into the image's /root/.ssh/authorized_keys by netroot init (overlay/sshkey.ts) without
// ever following what the untrusted image planted there.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  CmdlineError,
  type CmdlineValues,
  encodeSshKey,
  parseCmdline,
  renderCmdline,
} from "../contract/cmdline.ts";
import { installServerKey, keyMarker, withServerKey } from "../overlay/sshkey.ts";
import { ServerKey } from "../src/nodessh.ts";
import { loopExt4, run } from "./support/ext4disk.ts";

const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPBlmN1w4FAmNoYi+9vXS140PgvIT4SFNa23urUUqUQD";
const values: CmdlineValues = {
  mac: "52:54:00:00:00:01",
  hostname: "n1",
  nodeIp: "10.77.0.23",
  serverIp: "10.77.0.1",
  netmask: "255.255.255.0",
  url: "http://10.77.0.1:8080",
  root: "10.77.0.1:/netroot/images/abc",
  nfs: "4.2",
  imageId: "abc",
  token: "t0k",
  consoles: [],
};

Deno.test("cmdline: the server's ssh key is one word on the line and comes back as a key", () => {
  const line = renderCmdline({ ...values, sshKey: `${key} netroot@server` });
  assert.match(line, /(^| )netroot\.ssh=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5\S+( |$)/);
  assert.equal(parseCmdline(line).sshKey, key);
  assert.equal(parseCmdline(renderCmdline(values)).sshKey, undefined);
  assert.equal(encodeSshKey(`${key}\n`), key.replace(" ", ":"));
  // A key of another kind, or a word that is not a key, is refused at both ends.
  assert.throws(() => encodeSshKey("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"), /ssh-ed25519/);
  const bad = renderCmdline(values) + " netroot.ssh=ssh-ed25519:AAAA$(reboot)";
  assert.throws(
    () => parseCmdline(bad),
    (e) => e instanceof CmdlineError && /netroot\.ssh/.test(e.message),
  );
});

Deno.test("sshkey: only netroot's marked line is replaced; the image's keys stay", () => {
  const image = "ssh-rsa AAAAimage user@lab\n\nssh-ed25519 AAAAold " + keyMarker + "\n";
  const once = withServerKey(image, key);
  assert.equal(once, `ssh-rsa AAAAimage user@lab\n${key} ${keyMarker}\n`);
  assert.equal(withServerKey(once, key), once); // idempotent: a persistent root keeps one line
});

function tempRoot(): string {
  const root = Deno.makeTempDirSync({ prefix: "netroot-sshkey-" });
  Deno.mkdirSync(join(root, "root"), { mode: 0o700 });
  return root;
}

function assertInstalled(root: string, lines: string[]) {
  const dir = Deno.lstatSync(join(root, "root/.ssh"));
  assert.ok(dir.isDirectory && !dir.isSymlink);
  assert.equal(dir.mode! & 0o777, 0o700);
  assert.equal(dir.uid, 0);
  const f = Deno.lstatSync(join(root, "root/.ssh/authorized_keys"));
  assert.ok(f.isFile, "a regular file, not a link");
  assert.equal(f.mode! & 0o777, 0o600);
  assert.equal(f.uid, 0);
  assert.equal(f.nlink, 1);
  assert.deepEqual(
    Deno.readTextFileSync(join(root, "root/.ssh/authorized_keys")).trimEnd().split("\n"),
    lines,
  );
  assert.deepEqual([...Deno.readDirSync(join(root, "root/.ssh"))].map((e) => e.name).sort(), [
    "authorized_keys",
  ], "no temporary file left");
}

Deno.test("sshkey: a fresh image gets /root/.ssh 0700 and authorized_keys 0600, root-owned", () => {
  const root = Deno.makeTempDirSync({ prefix: "netroot-sshkey-" });
  try {
    installServerKey(root, key); // no /root at all: made 0700
    assert.equal(Deno.lstatSync(join(root, "root")).mode! & 0o777, 0o700);
    assertInstalled(root, [`${key} ${keyMarker}`]);
    Deno.chmodSync(join(root, "root/.ssh"), 0o777); // an image with loose modes is narrowed
    Deno.chownSync(join(root, "root/.ssh"), 1000, 1000);
    installServerKey(root, key);
    assertInstalled(root, [`${key} ${keyMarker}`]);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("sshkey: hostile links planted by the image are replaced, their targets untouched", () => {
  const root = tempRoot();
  const outside = Deno.makeTempDirSync({ prefix: "netroot-sshkey-outside-" });
  try {
    const victim = join(outside, "victim");
    Deno.writeTextFileSync(victim, "precious\n");
    // 1. authorized_keys → a file outside the new root (absolute, as the initramfs sees it).
    Deno.mkdirSync(join(root, "root/.ssh"), { mode: 0o700 });
    Deno.symlinkSync(victim, join(root, "root/.ssh/authorized_keys"));
    assert.match(installServerKey(root, key), /replaced the symlink authorized_keys/);
    assertInstalled(root, [`${key} ${keyMarker}`]);
    assert.equal(Deno.readTextFileSync(victim), "precious\n");

    // 2. .ssh → a directory outside: the link goes, a real directory replaces it.
    Deno.removeSync(join(root, "root/.ssh"), { recursive: true });
    Deno.symlinkSync(outside, join(root, "root/.ssh"));
    assert.match(installServerKey(root, key), /replaced the symlink \/root\/\.ssh/);
    assertInstalled(root, [`${key} ${keyMarker}`]);
    assert.deepEqual([...Deno.readDirSync(outside)].map((e) => e.name), ["victim"]);
    assert.equal(Deno.readTextFileSync(victim), "precious\n");

    // 3. authorized_keys hard-linked to another file of the image: rewritten, never written through.
    const shadow = join(root, "shadow");
    Deno.writeTextFileSync(shadow, "ssh-rsa AAAAimage user@lab\n");
    Deno.removeSync(join(root, "root/.ssh/authorized_keys"));
    Deno.linkSync(shadow, join(root, "root/.ssh/authorized_keys"));
    installServerKey(root, key);
    assertInstalled(root, ["ssh-rsa AAAAimage user@lab", `${key} ${keyMarker}`]);
    assert.equal(Deno.readTextFileSync(shadow), "ssh-rsa AAAAimage user@lab\n");

    // 4. a symlink waiting at our temporary file's name is not followed either.
    Deno.symlinkSync(victim, join(root, `root/.ssh/.authorized_keys.netroot-${Deno.pid}`));
    installServerKey(root, key);
    assertInstalled(root, ["ssh-rsa AAAAimage user@lab", `${key} ${keyMarker}`]);
    assert.equal(Deno.readTextFileSync(victim), "precious\n");
  } finally {
    Deno.removeSync(root, { recursive: true });
    Deno.removeSync(outside, { recursive: true });
  }
});

Deno.test("sshkey: a /root or authorized_keys that cannot be made safe is refused, one line", () => {
  const root = Deno.makeTempDirSync({ prefix: "netroot-sshkey-" });
  const outside = Deno.makeTempDirSync({ prefix: "netroot-sshkey-outside-" });
  try {
    // /root itself a symlink out of the new root: refused, nothing written there.
    Deno.symlinkSync(outside, join(root, "root"));
    assert.throws(() => installServerKey(root, key), /^Error: \/root in the image is a symlink/);
    assert.deepEqual([...Deno.readDirSync(outside)], []);
    Deno.removeSync(join(root, "root"));
    Deno.mkdirSync(join(root, "root/.ssh"), { recursive: true });
    // A FIFO would block the reader; a directory is no file; a huge file is not read into RAM.
    new Deno.Command("mkfifo", { args: [join(root, "root/.ssh/authorized_keys")] }).outputSync();
    assert.throws(
      () => installServerKey(root, key),
      /authorized_keys in the image is a special file/,
    );
    Deno.removeSync(join(root, "root/.ssh/authorized_keys"));
    Deno.mkdirSync(join(root, "root/.ssh/authorized_keys"));
    assert.throws(() => installServerKey(root, key), /is a directory/);
    Deno.removeSync(join(root, "root/.ssh/authorized_keys"));
    Deno.writeFileSync(join(root, "root/.ssh/authorized_keys"), new Uint8Array(300 * 1024));
    assert.throws(() => installServerKey(root, key), /307200 bytes \(over 262144\)/);
    // .ssh a regular file
    Deno.removeSync(join(root, "root/.ssh"), { recursive: true });
    Deno.writeTextFileSync(join(root, "root/.ssh"), "x");
    assert.throws(() => installServerKey(root, key), /\/root\/\.ssh in the image is a file/);
  } finally {
    Deno.removeSync(root, { recursive: true });
    Deno.removeSync(outside, { recursive: true });
  }
});

Deno.test("sshkey (root, loop ext4): a power cut after the first boot of a persistent root keeps the image's keys", async () => {
  // Hybrid persistent mode: the image's tree is the overlay's lower layer, the upper on the
  // node's ext4 keeps what the node writes, boot after boot.
  const tmp = await Deno.makeTempDir({ prefix: "netroot-sshkey-cut-" });
  const disk = await loopExt4(32);
  const merged = join(tmp, "merged");
  const mountRoot = () =>
    run(
      "mount",
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${tmp}/lower,upperdir=${disk.mnt}/upper,workdir=${disk.mnt}/work`,
      merged,
    );
  try {
    Deno.mkdirSync(join(tmp, "lower/root/.ssh"), { recursive: true, mode: 0o700 });
    Deno.writeTextFileSync(
      join(tmp, "lower/root/.ssh/authorized_keys"),
      "ssh-rsa AAAAimage admin@lab\n",
    );
    for (const d of ["upper", "work"]) Deno.mkdirSync(join(disk.mnt, d));
    Deno.mkdirSync(merged);
    mountRoot();
    run("sync");
    installServerKey(merged, key);
    // Any journal commit meanwhile (ext4's 5 s timer, the booted system writing), then the cut.
    disk.journalCommit();
    disk.powerCut();
    run("umount", merged);
    disk.powerOn();
    mountRoot();
    // The next boot reads the file (and keeps its lines): the image's key must still be there.
    assert.deepEqual(
      Deno.readTextFileSync(join(merged, "root/.ssh/authorized_keys")).trimEnd().split("\n"),
      ["ssh-rsa AAAAimage admin@lab", `${key} ${keyMarker}`],
    );
  } finally {
    try {
      run("umount", merged);
    } catch { /* not mounted */ }
    await disk.close();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("the server's own key (root, loop ext4): whole after a power cut right after it was made; a damaged pair is made anew, never handed out empty", async () => {
  const disk = await loopExt4(32);
  try {
    const dir = join(disk.mnt, "ssh");
    run("sync");
    const pub = new ServerKey(dir).publicKey();
    assert.match(pub, /^ssh-ed25519 \S+/);
    disk.cutAfterCommit(); // the commit: ext4's 5 s timer, or the database's next fsync
    assert.equal(new ServerKey(dir).publicKey(), pub);
    // What a cut left before ssh-keygen's files were flushed: an empty .pub (and private key).
    Deno.writeTextFileSync(join(dir, "id_ed25519.pub"), "");
    const fresh = new ServerKey(dir).publicKey();
    assert.match(fresh, /^ssh-ed25519 \S+/);
    assert.notEqual(fresh, pub);
    assert.ok(Deno.statSync(join(dir, "id_ed25519")).size > 0);
  } finally {
    await disk.close();
  }
});
