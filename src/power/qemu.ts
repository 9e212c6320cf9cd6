// `power.driver=qemu`, the default of virtual nodes: on starts the vnode's qemu, off stops it
// (a power cut for the guest), cycle does both, status says whether qemu runs. (`node reboot` of
// a vnode keeps its QMP reset: src/vnode/manager.ts registers that reboot mechanism.)
import { UserError } from "../errors.ts";
import { vnodeManager } from "../vnode/manager.ts";
import { type PowerDriver, type PowerTarget } from "./driver.ts";

function manager(t: PowerTarget) {
  if (!t.node.virtual) {
    throw new UserError(
      `node ${t.node.name} is not a virtual node: power.driver=qemu only powers virtual nodes`,
      409,
    );
  }
  return vnodeManager(t.ctx);
}

export const qemuDriver: PowerDriver = {
  name: "qemu",
  on: (t) => manager(t).powerOn(t.node.mac),
  off: (t) => manager(t).powerOff(t.node.mac),
  async cycle(t) {
    await manager(t).powerOff(t.node.mac);
    await manager(t).powerOn(t.node.mac);
  },
  status: (t) => Promise.resolve(manager(t).isRunning(t.node.mac) ? "on" : "off"),
};
