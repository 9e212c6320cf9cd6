// The kernel's netconsole on the boot NIC, when the kernel command line has `netconsole=` (node
// setting console.netconsole=true; the server renders it, contract/cmdline.ts): the modules of
// /netroot/netconsole.order (its dependencies, then netconsole, given the target as its
// parameter with the NIC's name filled in, which only the init knows). netconsole first sends
// the kernel log so far, so the server gets the whole boot, the init's own lines included (they
// go to the kernel log once the command line asks for netconsole: console.ts toKernelLog). A
// failure is said on the console and the boot goes on: the console is a diagnostic.
import { netconsoleOnDevice } from "../contract/cmdline.ts";
import type { InitConsole } from "./console.ts";
import type { LoadModule } from "./modules.ts";

export interface NetconsoleDeps {
  out: InitConsole;
  /** /netroot/netconsole.order: paths relative to `modulesDir`, netconsole last. */
  order: string;
  modulesDir: string;
  loadModule: LoadModule;
}

/** Starts netconsole to the `netconsole=` target through `ifname`; returns what it did. */
export function startNetconsole(value: string, ifname: string, deps: NetconsoleDeps): string {
  const target = netconsoleOnDevice(value, ifname);
  try {
    const paths = Deno.readTextFileSync(deps.order).split("\n").map((l) => l.trim())
      .filter(Boolean);
    if (!paths.length) throw new Error(`${deps.order} is empty: this kernel has no netconsole`);
    const last = paths.length - 1;
    const r = paths.map((p, i) =>
      deps.loadModule(`${deps.modulesDir}/${p}`, i === last ? `netconsole=${target}` : "")
    );
    const said = r[last] === "present"
      ? `netconsole was already in the kernel (built in: its target is netconsole= as the kernel read it)`
      : `netconsole: kernel log to ${target.slice(target.indexOf(",") + 1)} via ${ifname}`;
    deps.out.line(said);
    return said;
  } catch (e) {
    const said = `netconsole not started (${(e as Error).message}); going on`;
    deps.out.line(said);
    return said;
  }
}
