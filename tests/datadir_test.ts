import assert from "node:assert/strict";
import { DataDir } from "../src/datadir.ts";

Deno.test("a node's /persist: made owner-only (parents too), again without harm; a stray file in its place is an error and stays as it was", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = new DataDir(dir);
    await data.ensure();
    const mac = "02:00:00:00:00:01";
    data.makePersist(mac);
    assert.equal(Deno.statSync(data.persist(mac)).mode! & 0o777, 0o700);
    Deno.chmodSync(data.persist(mac), 0o755); // an older, wider one is narrowed
    data.makePersist(mac);
    assert.equal(Deno.statSync(data.persist(mac)).mode! & 0o777, 0o700);

    const other = "02:00:00:00:00:02";
    Deno.mkdirSync(data.persist(other).replace(/\/persist$/, ""), { recursive: true });
    Deno.writeTextFileSync(data.persist(other), "not a dir", { mode: 0o644 });
    assert.throws(() => data.makePersist(other), /exists and is not a directory/);
    assert.equal(Deno.statSync(data.persist(other)).mode! & 0o777, 0o644);
    assert.equal(Deno.readTextFileSync(data.persist(other)), "not a dir");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
