// The boot files' URLs, as the server's iPXE script names them and as the node's init asks for
// them: <netroot.url>/boot/<MAC with hyphens>/<kind>?image=<version id>. The pin keeps every file
// of one boot on one version: a deploy landing mid-boot changes the node's current version, not
// the version this boot's kernel, command line and NFS root already are.

export type BootFileKind = "kernel" | "initramfs" | "manifest";

export function bootFileUrl(base: string, mac: string, kind: BootFileKind, imageId: string) {
  // colons in URL paths break some HTTP clients
  return `${base}/boot/${mac.replaceAll(":", "-")}/${kind}?image=${imageId}`;
}
