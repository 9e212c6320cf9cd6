// The server's line in an image's /root/.ssh/authorized_keys: netroot init writes it at every boot
// (overlay/sshkey.ts), `node save` leaves it out of a saved version (src/images/machinestate.ts).
// Both ends find it by the key comment below, so the line of an older server key is found too.

/** Ends netroot's line in authorized_keys (the key comment): the line replaced at each boot. */
export const keyMarker = "netroot-server";

/** Whether an authorized_keys line is netroot's (its last word is the marker). */
export function isServerLine(line: string): boolean {
  const words = line.trim().split(/\s+/);
  return words[words.length - 1] === keyMarker;
}
