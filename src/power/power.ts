// Powering a node: the driver its settings name (virtual nodes: qemu by default), one action at a
// time per node, a timeline event for each change (`power.on|off|cycle`) or failure
// (`power.failed`), and error messages scrubbed of the node's secrets. Also makes the power
// driver the node's reboot mechanism (`node reboot` = power cycle) when power.driver is set.
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import { recordEvent } from "../events.ts";
import { type NodeInfo, secretShown } from "../nodes.ts";
import type { RebootTarget } from "../reboot.ts";
import { commandDriver } from "./command.ts";
import {
  type PowerAction,
  powerActions,
  type PowerDriver,
  PowerError,
  type PowerState,
  type PowerTarget,
} from "./driver.ts";
import { ipmiDriver } from "./ipmi.ts";
import { qemuDriver } from "./qemu.ts";
import { snmpPoeDriver } from "./snmp.ts";

/** The drivers every server has (src/server.ts adds an embedder's after them). */
export const builtinPowerDrivers: PowerDriver[] = [
  ipmiDriver,
  snmpPoeDriver,
  commandDriver,
  qemuDriver,
];

export interface PowerResult {
  mac: string;
  name: string;
  driver: string;
  action: PowerAction;
  /** The state after the action (status: as the device reports it). */
  state: PowerState;
}

/** Default deadline of each external command (setting power.timeout overrides it). */
const defaultTimeoutS = 15;

/** One power action at a time per node (a cycle must not interleave with an off). */
function serialized<T>(ctx: Context, mac: string, fn: () => Promise<T>): Promise<T> {
  const m = ctx.power.running;
  const next = (m.get(mac) ?? Promise.resolve()).catch(() => {}).then(fn);
  m.set(mac, next);
  return next.finally(() => {
    if (m.get(mac) === next) m.delete(mac);
  });
}

/** The driver a node's settings select, or why there is none. */
function driverOf(ctx: Context, node: NodeInfo, settings: Record<string, string>) {
  const name = settings["power.driver"] ?? (node.virtual ? "qemu" : undefined);
  if (!name) {
    throw new UserError(
      `node ${node.name} has no power driver: netroot node config ${node.name} ` +
        `power.driver=${
          ctx.power.names().filter((n) => n !== "qemu").join("|")
        } (and its power.* settings)`,
      409,
    );
  }
  const driver = ctx.power.get(name);
  if (!driver) throw new UserError(`node ${node.name}: unknown power.driver ${name}`, 409);
  return driver;
}

/** `text` with every secret setting value of the node replaced by `***` (a tool or script may
 *  echo one). Values shorter than 4 characters are left: they would garble the message. */
function scrub(ctx: Context, text: string, settings: Record<string, string>): string {
  const shown = ctx.nodes.rules.redact(settings);
  for (const [k, v] of Object.entries(settings)) {
    if (shown[k] === secretShown && v.length >= 4) text = text.split(v).join(secretShown);
  }
  return text;
}

/** Runs `action` on the node's power driver. Failures are UserErrors (502 for the device's). */
export function nodePower(ctx: Context, ref: string, action: PowerAction): Promise<PowerResult> {
  if (!powerActions.includes(action)) {
    throw new UserError(`power action must be one of ${powerActions.join(", ")}, got "${action}"`);
  }
  const node = ctx.nodes.get(ref);
  const settings = ctx.nodes.secretSettings(node.mac);
  const driver = driverOf(ctx, node, settings);
  const target: PowerTarget = {
    ctx,
    node,
    settings,
    timeoutMs: Number(settings["power.timeout"] ?? defaultTimeoutS) * 1000,
  };
  const result = (state: PowerState): PowerResult => ({
    mac: node.mac,
    name: node.name,
    driver: driver.name,
    action,
    state,
  });
  return serialized(ctx, node.mac, async () => {
    try {
      if (action === "status") return result(await driver.status(target));
      if (
        action === "on" && node.state !== "off" &&
        await driver.status(target).catch(() => null) === "on"
      ) {
        // Already on and not known off: no boot begins. Marked booting, a node running an image
        // without sshd (no probe answer) was power-cycled by the watchdog once its boot.timeout
        // passed. (A node known off that is on, stuck in its firmware, still gets the watchdog.)
        recordEvent(ctx.db, node.mac, "power.on", { driver: driver.name, already: true });
        return result("on");
      }
      await driver[action](target);
      recordEvent(ctx.db, node.mac, `power.${action}`, { driver: driver.name });
      if (action === "off") {
        ctx.nodes.setState(node.mac, "off", `powered off (${driver.name})`);
      } else {
        ctx.nodes.poweredOn(
          node.mac,
          `power ${action} (${driver.name}): no boot script fetched yet`,
        );
      }
      return result(action === "off" ? "off" : "on");
    } catch (e) {
      if (!(e instanceof Error)) throw e;
      const message = scrub(ctx, e.message, settings);
      recordEvent(ctx.db, node.mac, "power.failed", { driver: driver.name, action, message });
      if (e instanceof PowerError && e.leftOff) {
        // Shown running (booted) while its power is off: no wait or dashboard would say why. A
        // booting node stays so: its watchdog tries again (and says why, src/nodestate.ts).
        ctx.nodes.setState(node.mac, "off", `power ${action} (${driver.name}) failed: ${message}`, {
          from: ["booted", "down", "failed"],
        });
      }
      if (e instanceof UserError) throw new UserError(message, e.status);
      throw new Error(message);
    }
  });
}

/** Makes each power driver (but qemu: a vnode keeps its QMP reset) the reboot mechanism of the
 *  nodes that select it: `node reboot` and deploys power-cycle them. */
export function registerPowerReboots(ctx: Context): void {
  // Deploys pass NodeInfo (settings included): no query per node and mechanism.
  const settingsOf = (n: RebootTarget) =>
    (n as Partial<NodeInfo>).settings ?? ctx.nodes.find(n.mac)?.settings;
  for (const name of ctx.power.names().filter((n) => n !== "qemu")) {
    ctx.rebooter.register({
      name,
      handles: (n: RebootTarget) => settingsOf(n)?.["power.driver"] === name,
      reboot: async (n: RebootTarget) => void await nodePower(ctx, n.mac, "cycle"),
    });
  }
}
