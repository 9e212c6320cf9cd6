// iPXE scripts, as pure text rendering (no I/O): http.ts gathers the values, this module only
// formats them. The kernel command line inside them is the node contract's (contract/cmdline.ts).
import { LOADER_ARGS } from "../contract/cmdline.ts";
import type { ScriptPlan } from "./booter.ts";

/**
 * Text safe inside an iPXE `echo`: no setting expansion, no line break, and one command. iPXE has
 * no quoting: a word that is `||`, `&&` or `;` starts another command with the rest of the line
 * (a refusal quotes an image's own link targets: `; chain http://…` ran the image author's
 * script), one from `#` on is a comment, and a final `\` joins the next line. Such words are
 * shown in quotes, a final `\` as `?`.
 */
export function echoText(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, "?").replace(/\$/g, "S")
    .replace(/(?<=^| )(\|\||&&|;|#[^ ]*)(?= |$)/g, "'$1'")
    .replace(/\\$/, "?");
}

export interface BootScriptParams {
  mac: string;
  node: string;
  imageName: string;
  imageId: string;
  kernelUrl: string;
  initramfsUrl: string;
  cmdline: string;
  /** Download attempts before giving up and rebooting. */
  tries?: number;
}

/** The boot script of a node's plan (what GET /boot/<mac>.ipxe answers). */
export function renderPlanScript(p: ScriptPlan): string {
  return renderBootScript({
    mac: p.mac,
    node: p.nodeName,
    imageName: p.image.name,
    imageId: p.image.id,
    kernelUrl: p.kernelUrl,
    initramfsUrl: p.initramfsUrl,
    cmdline: p.cmdline,
  });
}

/**
 * The per-node boot script. A failed download is retried (after `imgfree`, so a half-fetched image
 * is not booted) and after the last try the node reboots instead of sitting at an iPXE prompt.
 * `initrd=initramfs` (LOADER_ARGS) on the kernel line is what EFI iPXE needs to hand the initrd
 * over; BIOS ignores it.
 */
export function renderBootScript(p: BootScriptParams): string {
  const tries = p.tries ?? 5;
  return [
    "#!ipxe",
    `echo netroot: node ${echoText(p.node)} (${p.mac})`,
    `echo netroot: image ${echoText(p.imageName)} (${p.imageId.slice(0, 12)})`,
    "set netroot-try:int32 0",
    ":retry",
    `kernel ${p.kernelUrl} ${LOADER_ARGS} ${p.cmdline} || goto failed`,
    `initrd --name initramfs ${p.initramfsUrl} || goto failed`,
    "boot || goto failed",
    ":failed",
    "imgfree ||",
    "inc netroot-try",
    `iseq \${netroot-try} ${tries} && goto giveup ||`,
    `echo netroot: download failed (try \${netroot-try} of ${tries}), retrying in 5 s`,
    "sleep 5",
    "goto retry",
    ":giveup",
    `echo netroot: boot failed ${tries} times, rebooting in 30 s`,
    "sleep 30",
    "reboot",
    "",
  ].join("\n");
}

/** A script for a node that cannot boot now: says why on its console, then reboots to try again. */
export function renderRefusalScript(reason: string, delaySeconds = 30): string {
  return [
    "#!ipxe",
    `echo netroot: ${echoText(reason)}`,
    `echo netroot: rebooting in ${delaySeconds} s`,
    `sleep ${delaySeconds}`,
    "reboot",
    "",
  ].join("\n");
}
