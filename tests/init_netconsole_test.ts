// The init's netconsole step (overlay/netconsole.ts) with a recording module loader: the modules
// of netconsole.order in order, the last one given the command line's target with the boot NIC
// named; any failure is a console line, never fatal.
import assert from "node:assert/strict";
import { join } from "node:path";
import { consoleOn } from "../overlay/console.ts";
import { startNetconsole } from "../overlay/netconsole.ts";

const target = "6665@10.77.0.23/,6666@10.77.0.1/52:54:00:aa:bb:cc";

Deno.test("init netconsole: loads configfs then netconsole with the target on the boot NIC", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initnc-" });
  try {
    const order = join(dir, "netconsole.order");
    await Deno.writeTextFile(
      order,
      "kernel/fs/configfs/configfs.ko\nkernel/drivers/net/netconsole.ko\n",
    );
    const lines: string[] = [];
    const out = consoleOn((b) => (lines.push(new TextDecoder().decode(b)), b.length));
    const calls: [string, string | undefined][] = [];
    const said = startNetconsole(target, "eth1", {
      out,
      order,
      modulesDir: "/lib/modules/6.1.0",
      loadModule: (path, params) => (calls.push([path, params]), "loaded"),
    });
    assert.deepEqual(calls, [
      ["/lib/modules/6.1.0/kernel/fs/configfs/configfs.ko", ""],
      [
        "/lib/modules/6.1.0/kernel/drivers/net/netconsole.ko",
        "netconsole=6665@10.77.0.23/eth1,6666@10.77.0.1/52:54:00:aa:bb:cc",
      ],
    ]);
    assert.equal(said, "netconsole: kernel log to 6666@10.77.0.1/52:54:00:aa:bb:cc via eth1");
    assert.deepEqual(lines, [`netroot-init: ${said}\n`]);

    // A kernel without netconsole (empty order file), a failing load: said, boot goes on.
    await Deno.writeTextFile(order, "");
    assert.match(
      startNetconsole(target, "eth1", { out, order, modulesDir: "/m", loadModule: () => "loaded" }),
      /^netconsole not started \(.*is empty: this kernel has no netconsole\); going on$/,
    );
    await Deno.writeTextFile(order, "kernel/drivers/net/netconsole.ko\n");
    const failing = () => {
      throw new Error("finit_module: ENODEV");
    };
    assert.match(
      startNetconsole(target, "eth1", { out, order, modulesDir: "/m", loadModule: failing }),
      /^netconsole not started \(finit_module: ENODEV\); going on$/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
