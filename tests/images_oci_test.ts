// OCI layout and `docker save` archives built by hand with GNU tar: layers applied in order,
// whiteouts, opaque directories, type changes, and a malicious layer. Needs root (setcap, chown).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { parseManifest } from "../contract/manifest.ts";
import { listXattrs } from "../src/linux/xattr.ts";
import { assertStoreEmpty, dirEntries, fixTimes, sh, T0, tempStore } from "./images_helpers.ts";

const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");

function write(root: string, p: string, s = p) {
  Deno.mkdirSync(`${root}${p.slice(0, p.lastIndexOf("/"))}`, { recursive: true });
  Deno.writeTextFileSync(`${root}${p}`, s);
}

/** Two layers: the second deletes, hides and replaces things from the first. */
function buildLayers(dir: string): { layer1: string[]; layer2: string[] } {
  const l1 = `${dir}/l1`, l2 = `${dir}/l2`;
  for (const p of ["/etc/keep", "/etc/gone", "/d/old1", "/d/sub/old2", "/x", "/opt/app/bin/run"]) {
    write(l1, p);
  }
  write(l1, "/boot/vmlinuz-6.1.0-oci", "kernel");
  Deno.mkdirSync(`${l1}/lib/modules/6.1.0-oci`, { recursive: true });
  Deno.copyFileSync("/bin/true", `${l1}/ping`);
  sh("setcap", "cap_net_raw+ep", `${l1}/ping`);
  write(l2, "/etc/.wh.gone", "");
  write(l2, "/opt/.wh.app", "");
  write(l2, "/d/.wh..wh..opq", "");
  write(l2, "/d/new", "new");
  Deno.linkSync(`${l2}/d/new`, `${l2}/d/new-link`);
  write(l2, "/x/inner", "x is a directory now");
  fixTimes(l1);
  fixTimes(l2);
  // Layer 2 carries d/ and x/ but not etc/ or opt/: their mtimes must survive the whiteouts.
  return {
    layer1: ["-C", l1, "."],
    layer2: ["-C", l2, "etc/.wh.gone", "opt/.wh.app", "d", "x"],
  };
}

function tarLayer(out: string, spec: string[], gzip: boolean): Uint8Array {
  sh("tar", "--xattrs", "--xattrs-include=*", ...(gzip ? ["--gzip"] : []), "-cf", out, ...spec);
  return Deno.readFileSync(out);
}

/** OCI image layout (directory) with gzip layers; returns its path. */
function ociLayout(dir: string, layers: { layer1: string[]; layer2: string[] }): string {
  const lay = `${dir}/oci`;
  Deno.mkdirSync(`${lay}/blobs/sha256`, { recursive: true });
  const blob = (b: Uint8Array | string) => {
    const bytes = typeof b === "string" ? new TextEncoder().encode(b) : b;
    const d = sha(bytes);
    Deno.writeFileSync(`${lay}/blobs/sha256/${d}`, bytes);
    return { digest: `sha256:${d}`, size: bytes.length };
  };
  const ls = [layers.layer1, layers.layer2].map((spec, i) => ({
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    ...blob(tarLayer(`${dir}/layer${i}.tgz`, spec, true)),
  }));
  const config = {
    mediaType: "application/vnd.oci.image.config.v1+json",
    ...blob(JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers" } })),
  };
  const manifest = blob(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config,
    layers: ls,
  }));
  Deno.writeTextFileSync(
    `${lay}/index.json`,
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", ...manifest }],
    }),
  );
  Deno.writeTextFileSync(`${lay}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
  return lay;
}

/** Classic `docker save` layout: <id>/layer.tar (uncompressed), manifest.json, repositories. */
function dockerSave(dir: string, layers: { layer1: string[]; layer2: string[] }): string {
  const out = `${dir}/docker`;
  const paths = [layers.layer1, layers.layer2].map((spec, i) => {
    const id = sha(`layer${i}`);
    Deno.mkdirSync(`${out}/${id}`, { recursive: true });
    tarLayer(`${out}/${id}/layer.tar`, spec, false);
    Deno.writeTextFileSync(`${out}/${id}/VERSION`, "1.0");
    return `${id}/layer.tar`;
  });
  Deno.writeTextFileSync(`${out}/cfg.json`, "{}");
  Deno.writeTextFileSync(
    `${out}/manifest.json`,
    JSON.stringify([{ Config: "cfg.json", RepoTags: ["lab/x:1"], Layers: paths }]),
  );
  Deno.writeTextFileSync(`${out}/repositories`, "{}");
  return out;
}

Deno.test("OCI archive: layers in order, whiteouts, opaque dir, type change, xattrs kept (root)", async () => {
  const t = await tempStore();
  try {
    const layers = buildLayers(t.dir);
    const lay = ociLayout(t.dir, layers);
    sh("tar", "-C", lay, "-cf", `${t.dir}/oci.tar`, ".");
    const img = await t.store.import(`${t.dir}/oci.tar`, "oci");
    const root = t.data.rootfs(img.id);
    const has = (p: string) => Deno.lstatSync(root + p) && true;
    const gone = (p: string) =>
      assert.throws(() => Deno.lstatSync(root + p), Deno.errors.NotFound, p);
    has("/etc/keep");
    gone("/etc/gone"); // .wh.gone
    gone("/opt/app"); // .wh.app removed a whole directory
    assert.deepEqual(await dirEntries(`${root}/opt`), []);
    assert.deepEqual(await dirEntries(`${root}/d`), ["new", "new-link"]); // opaque: lower d/ hidden
    assert.ok(Deno.lstatSync(`${root}/x`).isDirectory); // file x → directory x
    assert.equal(Deno.readTextFileSync(`${root}/x/inner`), "x is a directory now");
    gone("/d/.wh..wh..opq");
    gone("/etc/.wh.gone");
    assert.ok(listXattrs(`${root}/ping`)?.has("security.capability"));

    const m = new Map(
      parseManifest(await Deno.readTextFile(t.data.manifest(img.id))).map((e) => [e.path, e]),
    );
    assert.equal(m.get("/d/new-link")!.type, "hardlink");
    assert.equal(m.get("/etc")!.mtime, T0, "a whiteout does not leak the import time into /etc");
    assert.equal(m.get("/opt")!.mtime, T0);
    assert.ok([...m.keys()].every((p) => !p.includes(".wh.")));
    assert.equal(img.kernelVersion, "6.1.0-oci");
    assert.equal(img.bootable, true);

    // The same image as an OCI layout directory and as a classic docker save archive.
    const fromDir = await t.store.import(lay, "oci-dir");
    assert.equal(fromDir.id, img.id);
    assert.equal(fromDir.existed, true);
    const docker = dockerSave(t.dir, layers);
    sh("tar", "-C", docker, "-cf", `${t.dir}/docker.tar`, ".");
    const fromDocker = await t.store.import(`${t.dir}/docker.tar`, "docker");
    assert.equal(fromDocker.id, img.id);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("a layer writing through a lower layer's symlink is refused and leaves nothing (root)", async () => {
  const t = await tempStore();
  const outside = await Deno.makeTempDir({ prefix: "netroot-outside-" });
  try {
    const l1 = `${t.dir}/l1`, l2 = `${t.dir}/l2`;
    Deno.mkdirSync(l1);
    Deno.symlinkSync(outside, `${l1}/evil`);
    write(l2, "/evil/pwned", "owned");
    const lay = ociLayout(t.dir, { layer1: ["-C", l1, "."], layer2: ["-C", l2, "evil/pwned"] });
    sh("tar", "-C", lay, "-cf", `${t.dir}/oci.tar`, ".");
    await assert.rejects(
      t.store.import(`${t.dir}/oci.tar`, "evil"),
      /layer 2\/2 of .*: \/evil\/pwned would be written through the symlink \/evil/,
    );
    assert.deepEqual(await dirEntries(outside), []);
    await assertStoreEmpty(t);
  } finally {
    await t.close();
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("OCI layout with a layer that does not match its digest: clear error, nothing left", async () => {
  const t = await tempStore();
  try {
    const l1 = `${t.dir}/l1`;
    write(l1, "/etc/a");
    const lay = ociLayout(t.dir, { layer1: ["-C", l1, "."], layer2: ["-C", l1, "."] });
    const index = JSON.parse(Deno.readTextFileSync(`${lay}/index.json`));
    const manifest = JSON.parse(
      Deno.readTextFileSync(`${lay}/blobs/sha256/${index.manifests[0].digest.slice(7)}`),
    );
    const layerBlob = `${lay}/blobs/sha256/${manifest.layers[0].digest.slice(7)}`;
    const bytes = Deno.readFileSync(layerBlob);
    bytes[bytes.length - 10] ^= 0xff;
    Deno.writeFileSync(layerBlob, bytes);
    sh("tar", "-C", lay, "-cf", `${t.dir}/oci.tar`, ".");
    await assert.rejects(
      t.store.import(`${t.dir}/oci.tar`, "bad"),
      /corrupt image archive .*layer 1\/2 .* does not match its digest/,
    );
    await assertStoreEmpty(t);
  } finally {
    await t.close();
  }
});

Deno.test("multi-platform OCI index: the linux/amd64 image is applied, attestations ignored", async () => {
  const t = await tempStore();
  try {
    const l1 = `${t.dir}/l1`;
    write(l1, "/etc/os-release", "ID=test\n");
    fixTimes(l1);
    const lay = ociLayout(t.dir, { layer1: ["-C", l1, "."], layer2: ["-C", l1, "./etc"] });
    const single = await t.store.import(lay, "single");
    const index = JSON.parse(Deno.readTextFileSync(`${lay}/index.json`));
    const amd64 = index.manifests[0];
    const nested = JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [
        {
          ...amd64,
          digest: `sha256:${"1".repeat(64)}`,
          platform: { os: "linux", architecture: "arm64" },
        },
        { ...amd64, platform: { os: "linux", architecture: "amd64" } },
        {
          ...amd64,
          digest: `sha256:${"2".repeat(64)}`,
          platform: { os: "unknown", architecture: "unknown" },
        },
      ],
    });
    const d = sha(nested);
    Deno.writeTextFileSync(`${lay}/blobs/sha256/${d}`, nested);
    Deno.writeTextFileSync(
      `${lay}/index.json`,
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{
          mediaType: "application/vnd.oci.image.index.v1+json",
          digest: `sha256:${d}`,
          size: nested.length,
        }],
      }),
    );
    t.store.remove("single");
    const multi = await t.store.import(lay, "multi");
    assert.equal(multi.id, single.id);
  } finally {
    await t.close();
  }
});
